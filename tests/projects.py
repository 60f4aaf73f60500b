"""Helpers for tests: small real projects in temp dirs, run with the real dvc and kernels."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent  # helper modules (on pytest's pythonpath)
NOTEBOOKS = TESTS / "notebooks"
FIXTURES = TESTS / "fixtures"

# A small, fast version of the example: same notebooks, fewer rows and iterations.
SMALL_PARAMS = {
    "data": {"sample_fraction": 0.03},
    "train": {
        "max_iter": 30, "max_depth": [3, 5], "learning_rate": [0.1], "cv_folds": 2,
        "search_rows": 3000, "reference_rows": 500,
    },
}


def project_env() -> dict[str, str]:
    """Environment for dvc/nbp subprocesses: this venv first on PATH, no debug leaks."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    for key in ("NBPIPELINE_STAGE", "NBPIPELINE_ROOT", "NBPIPELINE_RUNNING", "NBP_DEBUG"):
        env.pop(key, None)
    env.setdefault("GIT_AUTHOR_NAME", "nbp-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "nbp-test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "nbp-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "nbp-test@example.invalid")
    return env


def sh(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``; on unexpected failure show its output."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=project_env(), capture_output=True, text=True,
        timeout=900, stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def merge_params(path: Path, overrides: dict) -> None:
    """Apply ``overrides`` (section -> key -> value) to a params.yaml."""
    data = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def init_repo(root: Path) -> None:
    """git init + dvc init + first commit, as a user's fresh clone would be."""
    sh("git", "init", "-q", "-b", "main", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "config", "core.analytics", "false", cwd=root)
    sh("dvc", "config", "core.check_update", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)


def make_example_project(root: Path, overrides: dict | None = None) -> Path:
    """Copy the example pipeline (notebooks, dvc.yaml, params.yaml) into ``root``, small:
    a git + DVC repo whose first commits hold it, as a user's fresh clone would be.

    The repo is made once per ``overrides`` in this test process (git init, dvc init and
    the commits cost ~5 s of subprocesses) and copied: each caller gets its own repo."""
    key = json.dumps(overrides if overrides is not None else SMALL_PARAMS, sort_keys=True)
    if key not in _EXAMPLE_TEMPLATES:
        template = _scratch("nbp-example-") / "project"
        _build_example_project(template, overrides)
        _EXAMPLE_TEMPLATES[key] = template
    return copy_project(_EXAMPLE_TEMPLATES[key], root)


_EXAMPLE_TEMPLATES: dict[str, Path] = {}  # overrides as JSON -> the repo made for them


def ran_example_project(root: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """:func:`make_example_project` (small) after its first `dvc repro` (data, train and
    evaluate; not committed), and that repro's output.

    The repro runs once in this test process, in a template that is copied to ``root``:
    tests that start from a trained example (each its own copy) share its ~30 s."""
    if not _RAN_EXAMPLE:
        template = _scratch("nbp-ran-example-") / "project"
        make_example_project(template)
        _RAN_EXAMPLE.append((template, sh("dvc", "repro", cwd=template)))
    template, first = _RAN_EXAMPLE[0]
    return copy_project(template, root), first


_RAN_EXAMPLE: list[tuple[Path, subprocess.CompletedProcess[str]]] = []


def _scratch(prefix: str) -> Path:
    """A temp dir for a template, removed by :func:`remove_templates` (or at exit)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _SCRATCH.append(path)
    return path


_SCRATCH: list[Path] = []


@atexit.register
def remove_templates() -> None:
    """Remove the templates this process made (conftest calls it at the end of the session:
    pytest-xdist's workers may exit without running atexit)."""
    _EXAMPLE_TEMPLATES.clear()
    _RAN_EXAMPLE.clear()
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def copy_project(source: Path, root: Path) -> Path:
    """Copy the project (git and DVC repo) at ``source`` to ``root``; DVC's run-time state in
    .dvc/tmp stays behind (it names the source's files)."""
    def skip(directory: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(directory) == source / ".dvc" else []

    shutil.copytree(source, root, symlinks=True, ignore=skip, dirs_exist_ok=True)
    return root


def _build_example_project(root: Path, overrides: dict | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / ".gitignore").write_text("*.tmp\n")
    merge_params(root / "params.yaml", overrides if overrides is not None else SMALL_PARAMS)
    sync_defaults(root)
    init_repo(root)
    # the plot templates dvc.yaml names and the offline page (`nbp plots setup`)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    sh("dvc", "config", "plots.html_template", "plots/offline.html", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "plot templates", cwd=root)
    return root


def sync_defaults(root: Path) -> None:
    """Rewrite each stage notebook's parameters cell to the project's params.yaml values,
    so running a notebook by hand gives what `dvc repro` gives."""
    from nbpipeline.notebook import (
        notebook_parameters,
        parameters_cell_index,
        read_notebook,
        write_notebook,
    )
    from nbpipeline.params import load_params, stage_values

    params = load_params(root / "params.yaml")
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = read_notebook(path)
        values = stage_values(params, path.stem, notebook_parameters(nb))
        nb.cells[parameters_cell_index(nb)].source = "\n".join(
            f"{k} = {v!r}" for k, v in values.items()
        )
        write_notebook(nb, path)


def add_stage(root: Path, stage: str, notebook: str, params: dict | None = None) -> None:
    """Put tests/notebooks/<notebook> in ``root`` as stage ``stage`` with ``params``."""
    shutil.copy(NOTEBOOKS / notebook, root / "notebooks" / f"{stage}.ipynb")
    dvc_yaml = root / "dvc.yaml"
    spec = yaml.safe_load(dvc_yaml.read_text()) if dvc_yaml.exists() else {"stages": {}}
    spec["stages"][stage] = {
        "cmd": f"nbp run {stage}",
        "deps": [f"notebooks/{stage}.ipynb"],
        "outs": [f"reports/{stage}.ipynb", f"reports/{stage}.html"],
    }
    if params:
        spec["stages"][stage]["params"] = [stage]
    dvc_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    params_yaml = root / "params.yaml"
    data = yaml.safe_load(params_yaml.read_text()) if params_yaml.exists() else {}
    data = data or {}
    if params:
        data[stage] = params
    params_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
