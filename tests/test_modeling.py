"""nbpipeline.modeling.fit_search: a search that shows its progress in a notebook."""

from __future__ import annotations

import subprocess
import sys

from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from nbpipeline.modeling import fit_search

SEARCH = """
from sklearn.datasets import load_breast_cancer
from sklearn.tree import DecisionTreeClassifier
from sklearn.model_selection import GridSearchCV
from IPython.core.interactiveshell import InteractiveShell
from nbpipeline.modeling import fit_search

InteractiveShell.instance()  # display() goes to stdout, updates included
X, y = load_breast_cancer(return_X_y=True)
search = GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [1, 3]}, cv=3,
                      scoring="roc_auc")
fit_search(search, X, y)
print(search.scoring, repr(search.best_score_))
"""


def _plain_search() -> GridSearchCV:
    return GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [1, 3]}, cv=3,
                        scoring="roc_auc")


def test_in_ipython_each_fit_updates_one_line_ending_without_times() -> None:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", SEARCH], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == "search: starting"
    assert [ln.split(",")[0] for ln in out[1:7]] == [f"search: {n}/6 fits" for n in range(1, 7)]
    assert out[7] == "search: 6 fits (2 candidates x 3 folds)"
    X, y = load_breast_cancer(return_X_y=True)
    expected = _plain_search().fit(X, y).best_score_
    assert out[8] == f"roc_auc {expected!r}"  # same result, scoring restored


def test_outside_ipython_it_is_a_plain_fit() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    search = fit_search(_plain_search(), X, y)
    assert search.scoring == "roc_auc"
    assert search.best_score_ == _plain_search().fit(X, y).best_score_
