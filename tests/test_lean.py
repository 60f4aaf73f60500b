"""nbpipeline.lean: blocked extras are skipped during one import, importable afterwards."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from nbpipeline import lean
lean.papermill()
skipped = [m for m in ("pyarrow", "rfc3987_syntax", "webcolors", "requests", "click",
                       "entrypoints") if m in sys.modules]
import pyarrow, rfc3987_syntax, papermill.iorw, requests, click, entrypoints
from papermill.engines import papermill_engines
print(skipped, papermill.iorw.HadoopFileSystem.__name__, pyarrow.__name__,
      callable(requests.get), hasattr(papermill.iorw.requests, "get"), callable(click.echo),
      callable(entrypoints.get_group_all), sorted(map(str, papermill_engines._engines)))
"""


def test_extras_are_skipped_then_importable() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    # HDFS back-end off, pyarrow fine; papermill's HTTP handler without requests, which
    # imports normally afterwards
    # no scan for third-party engines: papermill's own two (None: the default, nbclient)
    assert out == ["[]", "missing_dep", "pyarrow", "True", "False", "True", "True",
                   "['None',", "'nbclient']"]
