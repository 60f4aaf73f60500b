"""A stage's report opens with its summary: `nbp run` of a real kernel in a git repo, the
.ipynb byte-stable, the HTML page read in real Chromium."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import nbformat
import pytest
import yaml
from projects import add_stage, sh

from nbpipeline.notebook import SUMMARY_TAG
from nbpipeline.record import read_run_record

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Stage `scores` (tests/notebooks/summary_with_verdict.ipynb) run twice, unchanged."""
    root = tmp_path_factory.mktemp("summary")
    (root / "notebooks").mkdir()
    (root / "data").mkdir()
    (root / "data" / "input.csv").write_text("a,b\n1,2\n")
    add_stage(root, "scores", "summary_with_verdict.ipynb",
              {"rows": 20, "factor": 1.5, "name": "scores"})
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["scores"]["deps"].append("data/input.csv")
    spec["stages"]["scores"]["outs"].append("data/output.csv")
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sh("git", "init", "-q", "-b", "main", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    sh("nbp", "run", "scores", cwd=root)
    first = (root / "reports" / "scores.ipynb").read_bytes()
    sh("nbp", "run", "scores", cwd=root)
    return {"root": root, "first": first,
            "rev": sh("git", "rev-parse", "--short", "HEAD", cwd=root).stdout.strip()}


def test_summary_cell_comes_first_and_the_ipynb_is_byte_stable(ran: dict) -> None:
    root: Path = ran["root"]
    report = root / "reports" / "scores.ipynb"
    assert report.read_bytes() == ran["first"]  # run time lives in the HTML's run record
    nb = nbformat.read(report, as_version=4)
    summary = nb.cells[0]
    assert SUMMARY_TAG in summary.metadata["tags"]
    text = summary.source
    assert text.startswith("## Stage `scores`") and f"git `{ran['rev']}`" in text
    assert "**Gate: FAILED**" in text and "- failing: min_roc_auc.golden (0.55 vs 0.6)" in text
    assert "| `rows` | 20 | 10 |" in text and "| `factor` | 1.5 | same |" in text
    assert "| `rows.total` | 24,685 |" in text
    assert text.index("| `valid.roc_auc` | 0.7 |") < text.index("`rows.total`")  # gate metric first
    sha = __import__("hashlib").sha256(b"a,b\n1,2\n").hexdigest()
    assert f"| `data/input.csv` | `{sha[:12]}` |" in text
    assert "data/output.csv" not in text  # files written: in the run record
    assert text.index("Gate") < text.index("| parameter") < text.index("key metric")
    assert nb.metadata["nbpipeline"]["stage"] == "scores"


def test_page_is_titled_numbered_and_free_of_stray_reprs(ran: dict) -> None:
    html = (ran["root"] / "reports" / "scores.html").read_text()
    assert "<title>scores</title>" in html
    prompts = re.findall(r"In\xa0\[(\d*)\]:", html)
    assert prompts and prompts == [str(n) for n in range(1, len(prompts) + 1)]
    assert "PosixPath" not in html  # an expression's echo
    assert "factor = 1.5" not in html  # parameters cells: shown once, in the summary
    record = read_run_record(ran["root"] / "reports" / "scores.html")
    assert record is not None and record["stage"] == "scores" and record["git"] == ran["rev"]
    assert record["params"] == {"rows": 20, "factor": 1.5, "name": "scores"}
    assert record["started"].endswith("+00:00") and record["seconds"] > 0
    assert list(record["hashes"]["read"]) == ["data/input.csv"]
    assert list(record["hashes"]["written"]) == ["data/output.csv"]
    assert "data/output.csv" in html and "data and model files written" in html
    json.dumps(record)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")
def test_page_reads_summary_first_with_code_folded_in_chromium(ran: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page_url = (ran["root"] / "reports" / "scores.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(page_url, wait_until="domcontentloaded")
        page.screenshot(path=str(tmp_path / "folded.png"))
        folded = page.inner_text("main")
        code = page.get_by_text('root = nbp.init("scores")')
        hidden = not code.is_visible()
        page.get_by_text("show code").click()
        shown = code.is_visible()
        page.screenshot(path=str(tmp_path / "shown.png"), full_page=True)
        browser.close()
    lines = [line.strip() for line in folded.splitlines() if line.strip()]
    assert lines[0] == "▸ show code" and lines[1] == "Stage scores"
    assert lines[2].startswith(f"git {ran['rev']} · ran ") and " UTC · took " in lines[2]
    assert lines[3].startswith("Gate: FAILED")
    assert "24,685" in folded and "rows\t20\t10" in folded
    assert hidden and shown  # code folded until the toggle is clicked
    assert (tmp_path / "folded.png").stat().st_size > 20_000


def test_page_is_stock_nbconvert_byte_for_byte(ran: dict) -> None:
    """The renderer's process (cached templates, selectors without soupsieve), forked or
    fresh, writes what nbconvert's own HTMLExporter renders, to the byte; also for images
    without alt text."""
    from nbconvert import HTMLExporter

    from nbpipeline.pipeline.stage_page import PageRenderer, render_page

    html = ran["root"] / "reports" / "scores.html"
    nb = nbformat.read(ran["root"] / "reports" / "scores.ipynb", as_version=4)
    record = read_run_record(html)
    stock = HTMLExporter(template_name="lab")
    assert html.read_text(encoding="utf-8") == render_page(stock, nb, record)
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
           "AAAABJRU5ErkJggg==")
    nb.cells.append(nbformat.v4.new_markdown_cell(f"<img src='data:image/png;base64,{png}'>"))
    nb.cells.append(nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
        "display_data", {"image/png": png, "text/html": "<b>x</b>"})]))
    expected = render_page(stock, nb, record)
    with PageRenderer() as pages:  # forked from this process
        assert pages.render(nb, record) == expected
    busy = threading.Event()  # a process with other threads starts a fresh interpreter
    thread = threading.Thread(target=busy.wait)
    thread.start()
    try:
        with PageRenderer() as pages:
            assert pages.render(nb, record) == expected
    finally:
        busy.set()
        thread.join()
