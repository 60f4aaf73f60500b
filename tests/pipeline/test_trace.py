"""Undeclared dependencies: the preload tracer, and `nbp run` under real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from projects import REPO, init_repo, make_example_project, sh

from nbpipeline.notebook import read_notebook
from nbpipeline.pipeline.stages import NotebookStage
from nbpipeline.pipeline.trace import Trace, Tracer, describe, ignored, untraced_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux")


def traced(root: Path, code: str, tmp: Path) -> Trace:
    """What a Python process running ``code`` in ``root`` did, as the tracer saw it."""
    tracer = Tracer(root, "s", tmp / "trace.log")
    env = tracer.start()
    assert env is not None, tracer.unavailable
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=root, check=True,
                   env={**os.environ, **env})
    trace = tracer.stop()
    assert trace is not None, tracer.unavailable
    return trace


def test_tracer_sees_python_cpp_and_subprocess_reads_writes_renames_deletes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "in.csv").write_text("a\n1\n")
    (root / "data" / "by_cat.txt").write_text("x\n")
    pd.DataFrame({"a": [1]}).to_parquet(root / "data" / "t.parquet")
    (root / "old.txt").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    trace = traced(root, """
        import os, subprocess
        import pandas as pd
        open("data/in.csv").read()                      # Python open
        pd.read_parquet("data/t.parquet")               # pyarrow's C++ reader
        subprocess.run(["cat", "data/by_cat.txt", ".git/HEAD"], check=True,
                       capture_output=True)             # a program the code starts
        os.makedirs("models/candidate")
        with open("models/candidate/.model.bin.tmp", "wb") as fh:
            fh.write(b"m")
        os.replace("models/candidate/.model.bin.tmp", "models/candidate/model.bin")
        os.remove("old.txt")
        with open("scratch.txt", "w") as fh:            # made and removed again: no out
            fh.write("x")
        os.remove("scratch.txt")
        with open("helper.py", "w") as fh:
            fh.write("x = 1")
        """, tmp_path)
    assert trace.read == {"data/in.csv", "data/t.parquet", "data/by_cat.txt"}
    assert trace.written == {"models/candidate/model.bin", "old.txt"}
    stage = NotebookStage("s", "s", "nbp run s", (), ("data/in.csv",), ("models",), (), ())
    assert trace.undeclared(stage) == (["data/by_cat.txt", "data/t.parquet"], ["old.txt"])


def test_other_processes_are_never_attributed_to_the_stage(tmp_path: Path) -> None:
    """Regression (issue: a fresh clone's first run failed): inotify saw every process's
    reads, so an editor, a shell or git re-hashing a fresh clone failed correct stages."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "README.md").write_text("hello")
    tracer = Tracer(root, "s", tmp_path / "trace.log")
    env = tracer.start()
    assert env is not None
    (root / "README.md").read_text()                          # this process: not traced
    subprocess.run(["cat", str(root / "README.md")], check=True, capture_output=True)
    (root / "notes.txt").write_text("by another process")
    subprocess.run([sys.executable, "-c", "print(1)"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    trace = tracer.stop()
    assert trace == Trace(read=set(), written=set())


def test_bookkeeping_subprocesses_run_untraced(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "README.md").write_text("hello")
    trace = traced(root, """
        import subprocess
        from nbpipeline.pipeline.trace import untraced_env
        subprocess.run(["cat", "README.md"], env=untraced_env(), check=True,
                       capture_output=True)
        """, tmp_path)
    assert trace.read == set()
    assert "LD_PRELOAD" not in untraced_env({"LD_PRELOAD": "/c/nbp-trace-shim-1.so"})
    assert untraced_env({"LD_PRELOAD": "/x/other.so /c/nbp-trace-shim-1.so"})["LD_PRELOAD"] == (
        "/x/other.so")


def test_a_tracer_without_the_shim_says_so_and_judges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbpipeline.pipeline.trace as trace_module

    monkeypatch.setattr(trace_module, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(trace_module.tempfile, "gettempdir", lambda: str(tmp_path / "t"))
    monkeypatch.setattr(trace_module.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    tracer = Tracer(tmp_path, "s", tmp_path / "trace.log")
    assert tracer.start() is None
    assert tracer.unavailable and "no C compiler" in tracer.unavailable

    loaded_nowhere = Tracer(tmp_path, "s", tmp_path / "trace2.log")
    loaded_nowhere.log.write_text("")
    assert loaded_nowhere.stop() is None and "did not load" in str(loaded_nowhere.unavailable)


def test_ignored_files() -> None:
    for rel in (".dvc/tmp/x", "pkg/__pycache__/m.pyc", "src/mod.py", "params.yaml", "dvc.lock",
                "data.dvc", "monitoring/dvc.yaml", "monitoring/dvc.lock", "notebooks/train.ipynb",
                "reports/s.ipynb", "reports/s.html", "data/.x.parquet.tmp"):
        assert ignored(rel, "s"), rel
    for rel in ("data/train.parquet", "reports/other.ipynb", "config/settings.yaml"):
        assert not ignored(rel, "s"), rel


def test_dvcignore_patterns_and_virtualenvs_are_not_traced(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "registry").mkdir(parents=True)
    (root / ".dvcignore").write_text("registry/\n")
    (root / "registry" / "events.jsonl").write_text("{}\n")
    (root / "venv" / "lib").mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "venv" / "lib" / "data.txt").write_text("x")
    trace = traced(root, """
        open("registry/events.jsonl").read()
        open("venv/lib/data.txt").read()
        """, tmp_path)
    assert trace.read == set()


def test_describe_names_files_and_the_fix() -> None:
    text = describe("io", ["a.csv"], ["out/b.txt"], "notebooks/io.ipynb")
    assert "stage 'io' read 1 project file(s) that dvc.yaml does not list as its deps" in text
    assert "  read  a.csv" in text and "  wrote out/b.txt" in text
    assert "`nbp stage add notebooks/io.ipynb --deps a.csv`" in text
    assert "`nbp stage add notebooks/io.ipynb --outs out/b.txt`" in text


def _io_project(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "inputs").mkdir()
    shutil.copy(REPO / "tests" / "notebooks" / "reads_input_writes_output.ipynb",
                root / "notebooks" / "io.ipynb")
    pd.DataFrame({"a": [1, 2, 3]}).to_parquet(root / "inputs" / "table.parquet")
    (root / "dvc.yaml").write_text("# the io stage\nstages: {}\n")
    return root


def test_undeclared_read_and_write_fail_dvc_repro_until_declared(tmp_path: Path) -> None:
    root = _io_project(tmp_path / "io")
    sh("nbp", "stage", "add", "notebooks/io.ipynb", cwd=root)
    init_repo(root)
    proc = sh("dvc", "repro", cwd=root, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "stage 'io' read 1 project file(s) that dvc.yaml does not list as its deps" in out
    assert "  read  inputs/table.parquet" in out
    assert "  wrote outputs/rows.txt" in out
    assert "Traceback" not in out

    by_hand = sh("nbp", "run", "io", cwd=root)  # typed by hand: a warning, not a failure
    assert "nbp: warning: stage 'io' read" in by_hand.stderr

    sh("nbp", "stage", "add", "notebooks/io.ipynb", "--deps", "inputs/table.parquet",
       "--outs", "outputs/rows.txt", cwd=root)
    assert sh("nbp", "check", cwd=root).returncode == 0
    sh("dvc", "repro", cwd=root)
    assert (root / "outputs" / "rows.txt").read_text() == "3\n"
    assert "outputs/rows.txt" in (root / "dvc.lock").read_text()


def test_example_data_stage_passes_tracing_under_dvc(tmp_path: Path) -> None:
    root = make_example_project(tmp_path / "example")
    proc = sh("dvc", "repro", "data", cwd=root)
    assert "stage 'data' done" in proc.stdout
    assert "warning" not in proc.stderr
    # live progress passes through DVC: a line per code cell, on stderr
    progress = [ln for ln in proc.stderr.splitlines()
                if ln.startswith("nbp run data: cell ") and " done in " in ln]
    # the notebook's code cells and papermill's injected parameters cell
    cells = 1 + sum(c.cell_type == "code"
                    for c in read_notebook(root / "notebooks" / "data.ipynb").cells)
    assert progress[0].startswith(f"nbp run data: cell 1/{cells} done in ")
    assert progress[-1].startswith(f"nbp run data: cell {cells}/{cells} done in ")
    assert any(ln.endswith(" s: Quarantine invalid rows") for ln in progress)
