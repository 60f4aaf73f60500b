"""Undeclared dependencies: the inotify tracer, and `nbp run` under real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from projects import REPO, init_repo, make_example_project, sh

from nbpipeline.trace import Trace, Tracer, describe, ignored

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")


def traced(root: Path, action) -> Trace:
    tracer = Tracer(root, "s")
    assert tracer.start()
    try:
        action()
    finally:
        result = tracer.stop()
    return result


def test_tracer_sees_reads_writes_renames_deletes_and_new_dirs(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.csv").write_text("a\n1\n")
    (tmp_path / "data" / "t.parquet").write_bytes(b"")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "data" / "t.parquet")
    (tmp_path / "old.txt").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")

    def work() -> None:
        (tmp_path / "data" / "in.csv").read_text()
        pd.read_parquet(tmp_path / "data" / "t.parquet")  # C++ reader
        subprocess.run(["cat", str(tmp_path / ".git" / "HEAD")], check=True,
                       capture_output=True)
        deep = tmp_path / "models" / "candidate"
        deep.mkdir(parents=True)
        tmp = deep / ".model.bin.tmp"
        tmp.write_bytes(b"m")
        os.replace(tmp, deep / "model.bin")
        (tmp_path / "old.txt").unlink()
        (tmp_path / "helper.py").write_text("x = 1\n")

    trace = traced(tmp_path, work)
    assert trace.read == {"data/in.csv", "data/t.parquet"}
    assert trace.written == {"models/candidate/model.bin", "old.txt"}
    assert trace.complete
    assert trace.undeclared(["data/in.csv"], ["models"]) == (["data/t.parquet"], ["old.txt"])


def test_ignored_files() -> None:
    for rel in (".dvc/tmp/x", "pkg/__pycache__/m.pyc", "src/mod.py", "params.yaml", "dvc.lock",
                "data.dvc", "monitoring/dvc.yaml", "monitoring/dvc.lock", "notebooks/train.ipynb",
                "reports/s.ipynb", "reports/s.html", "data/.x.parquet.tmp"):
        assert ignored(rel, "s"), rel
    for rel in ("data/train.parquet", "reports/other.ipynb", "config/settings.yaml"):
        assert not ignored(rel, "s"), rel


def test_dvcignore_patterns_are_not_traced(tmp_path: Path) -> None:
    (tmp_path / ".dvcignore").write_text("registry/\n")
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "events.jsonl").write_text("{}\n")
    trace = traced(tmp_path, lambda: (tmp_path / "registry" / "events.jsonl").read_text())
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


def test_too_many_directories_make_the_trace_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbpipeline.trace as trace_module

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(trace_module, "MAX_WATCHED_DIRS", 2)
    assert not traced(tmp_path, lambda: None).complete


def test_a_file_renamed_into_a_new_dir_while_it_is_being_watched_is_seen(tmp_path: Path) -> None:
    """Regression (a flaky CI run): the tracer listed a new directory, then watched it. A
    file renamed into place between the two (write to a temp name, then rename: what
    atomic writers do) was in neither the listing nor the events. The rename is made here
    at exactly that moment: when the tracer asks inotify to watch the directory."""
    root, staging = tmp_path / "proj", tmp_path / "staging"
    root.mkdir()
    (staging / "models" / "candidate").mkdir(parents=True)
    (staging / "models" / "candidate" / ".model.bin.tmp").write_bytes(b"m")
    tracer = Tracer(root, "s")
    assert tracer.start()
    real = tracer._libc

    class RenameJustBeforeTheWatch:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
            tmp = Path(os.fsdecode(path)) / ".model.bin.tmp"
            if tmp.exists():
                os.replace(tmp, tmp.with_name("model.bin"))
            return int(real.inotify_add_watch(fd, path, mask))

    tracer._libc = RenameJustBeforeTheWatch()
    try:  # the whole tree appears at once: one event, then the tracer walks it
        os.rename(staging / "models", root / "models")
    finally:
        trace = tracer.stop()
    assert trace.written == {"models/candidate/model.bin"}
