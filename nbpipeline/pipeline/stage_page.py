"""A stage's HTML page, rendered in a helper process that warms up while the kernel runs.

The page is the executed notebook as nbconvert's ``lab`` template renders it, read summary
first: title = stage name; code folded behind a "show code" toggle (a checkbox and CSS, no
script); prompts numbered in execution order (the .ipynb keeps none, so that it diffs
cleanly); the parameters cells left out (the summary shows them); stray reprs (an
expression's ``PosixPath(...)`` or ``<... at 0x...>`` echo) left out; the run record
embedded (nbpipeline.pipeline.stage_report).

Importing nbconvert and its first render cost about 0.6 s of CPU, which on `nbp run`'s
critical path came right after the last cell (measured: the parent's CPU, not the kernel's,
bounded a one-cell stage). So :class:`PageRenderer` starts a helper process as soon as the
stage's parameters are valid, forked from `nbp run` before its kernel starts: it imports
nbconvert and renders a tiny notebook (compiling the templates and the regular expressions
a first render needs) while the kernel boots and the cells run, then renders each page it
is sent over a pipe. Its warm-up is cheaper than nbconvert's own first render, with the
same bytes out:

* the compiled Jinja templates are kept in Jinja's bytecode cache, in the user's cache
  directory (an entry is used only for the same template file and source);
* the three CSS selectors nbconvert's HTML exporter applies to its output are matched by
  plain functions: soupsieve compiles ~100 regular expressions at import and more for a
  first selector (it is imported only for a selector another nbconvert version adds).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import Any, BinaryIO

from nbpipeline import lean, threads
from nbpipeline.errors import StageError
from nbpipeline.notebook import INJECTED_TAG, PARAMETERS_TAG, SUMMARY_TAG
from nbpipeline.record import run_record_block

__all__ = ["PageRenderer", "hash_table", "html_exporter", "render_page", "serve"]

# An expression's echo that says nothing to a reader: a path object, an object address,
# matplotlib's return values (`Text(...)`, `[<matplotlib.lines.Line2D ...>]`).
_STRAY_REPR = re.compile(r"^(Posix|Windows)?Path\(|^Text\(|<[^<>]* at 0x[0-9a-f]+>", re.S)
_TOGGLE_CSS = """<style>
.nbp-toggle { position: sticky; top: 0; z-index: 10; display: block; margin: 0 0 8px;
  padding: 6px 12px; background: #f5f7fa; border-bottom: 1px solid #e3e7ee;
  font: 13px system-ui, sans-serif; color: #5f6b7a; cursor: pointer; }
#nbp-show-code:not(:checked) ~ .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
#nbp-show-code { position: absolute; opacity: 0; }
#nbp-show-code:focus-visible + .nbp-toggle { outline: 2px solid #2f6fde; }
#nbp-show-code:checked + .nbp-toggle .nbp-show,
#nbp-show-code:not(:checked) + .nbp-toggle .nbp-hide { display: none; }
.jp-RenderedMarkdown table { margin-left: 0; }
</style>
"""


def hash_table(title: str, hashes: Mapping[str, str]) -> list[str]:
    """Markdown table lines of file hashes (shortened), under ``title``; none if empty."""
    if not hashes:
        return []
    return [f"| {title} | sha256 |", "|---|---|",
            *(f"| `{rel}` | `{sha[:12]}` |" for rel, sha in hashes.items()), ""]


# ----------------------------------------------------------------------------- the page
def _for_reading(nb: Any, record: Mapping[str, Any] | None) -> Any:
    """A copy of ``nb`` as the page shows it (the .ipynb itself is left as it is)."""
    page = copy.deepcopy(nb)
    summarised = any(SUMMARY_TAG in c.get("metadata", {}).get("tags", []) for c in page.cells)
    hidden = (PARAMETERS_TAG, INJECTED_TAG) if summarised else ()
    page.cells = [c for c in page.cells
                  if not set(c.get("metadata", {}).get("tags", [])) & set(hidden)]
    numbered = all(c.get("execution_count") is None for c in page.cells
                   if c.cell_type == "code")
    count = 0
    for cell in page.cells:
        if cell.cell_type != "code":
            if record and SUMMARY_TAG in cell.get("metadata", {}).get("tags", []):
                when = record["started"].replace("T", " ").replace("+00:00", " UTC")
                parts = cell.source.split("\n\n")  # heading, facts line, the rest
                parts[1] += f" · ran {when} · took {record['seconds']:,.1f} s"
                written = hash_table("data and model files written",
                                     record["hashes"].get("written") or {})
                if written:
                    parts.append("\n".join(written).rstrip())
                if record.get("threads"):
                    parts.append(f"**Run settings.** {threads.describe(record['threads'])}")
                cell.source = "\n\n".join(parts)
            continue
        if numbered:  # a successful run: every code cell ran, in order
            count += 1
            cell.execution_count = count
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.get("output_type") == "execute_result" and set(data) == {"text/plain"} \
                    and _STRAY_REPR.search(str(data["text/plain"])):
                continue
            if numbered and "execution_count" in output:
                output["execution_count"] = count
            outputs.append(output)
        cell.outputs = outputs
    return page


def _decorate(body: str, record: Mapping[str, Any] | None, fold: bool) -> str:
    """The exported page with the code toggle and the run record."""
    toggle = (f'<input type="checkbox" id="nbp-show-code"{"" if fold else " checked"}>'
              '<label class="nbp-toggle" for="nbp-show-code"><span class="nbp-show">&#9656; show '
              'code</span><span class="nbp-hide">&#9662; hide code</span></label>\n')
    block = run_record_block(record) if record is not None else ""
    body = body.replace("</head>", _TOGGLE_CSS + "</head>", 1)
    return body.replace("<main>", "<main>\n" + block + toggle, 1)


def _warm_up_notebook() -> Any:
    """A tiny notebook that touches what a first render loads lazily: markdown, the
    IPython lexer, stream and HTML outputs."""
    v4 = lean.nbformat().v4
    output = v4.new_output("display_data", {"text/html": "<table><tr><td>1</td></tr></table>"})
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# title\n*a* `b`"),
        v4.new_code_cell("import os\nx = 1", outputs=[v4.new_output("stream", text="x\n"), output]),
    ])
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    return nb


def _stage_of(nb: Any) -> str:
    """The stage a notebook without a summary ran (a failed run's): its source's name."""
    for key in ("input_path", "output_path"):
        path = nb.metadata.get("papermill", {}).get(key)
        if isinstance(path, str) and path.endswith(".ipynb"):
            return Path(path).name.split(".")[0] or Path(path).name.split(".")[1]
    return "notebook"


# ----------------------------------------------------------------------------- the helper
# nbconvert, bs4 and jinja2 are imported inside functions that run in the helper only:
# `nbp run` itself never imports them (that is the point of the helper).
def _bytecode_cache() -> Any:
    """Jinja's bytecode cache in ``$XDG_CACHE_HOME/nbpipeline/templates`` (default
    ``~/.cache``; a run leaves nothing in the temp dir); None where it cannot be written."""
    from jinja2 import FileSystemBytecodeCache

    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        directory = base / "nbpipeline" / "templates"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # no home directory, a read-only one
        return None
    return FileSystemBytecodeCache(str(directory)) if os.access(directory, os.W_OK) else None


def _has_class(tag: Any, name: str) -> bool:
    return name in (tag.get("class") or [])


def _in_notebook(tag: Any) -> bool:
    return any(_has_class(parent, "jp-Notebook") for parent in tag.parents)


# The selectors of nbconvert's HTMLExporter.from_notebook_node, as find_all matches.
_SELECTORS: dict[str, Callable[[Any], bool]] = {
    "img:not([alt])": lambda tag: tag.name == "img" and "alt" not in tag.attrs,
    ".jp-Notebook div.jp-Cell-inputWrapper": lambda tag: tag.name == "div" and _has_class(
        tag, "jp-Cell-inputWrapper") and _in_notebook(tag),
    ".jp-Notebook div.jp-OutputArea-output": lambda tag: tag.name == "div" and _has_class(
        tag, "jp-OutputArea-output") and _in_notebook(tag),
}


def html_exporter() -> Any:
    """nbconvert's HTML exporter (``lab`` template), warmed up; its templates cached and
    its selectors matched without soupsieve (module docstring). Same output as stock."""
    lean.nbformat()  # before nbconvert imports it with jsonschema's slow extras
    with warnings.catch_warnings():  # bs4: "soupsieve is not installed"
        warnings.simplefilter("ignore")
        html_module = lean.import_without("nbconvert.exporters.html", ("soupsieve",))
    import bs4.css
    soup: Any = html_module.BeautifulSoup

    class Soup(soup):  # type: ignore[misc]
        def select(self, selector: str, *args: Any, **kwargs: Any) -> Any:
            match = _SELECTORS.get(selector)
            if match is None or args or kwargs:  # a selector of another nbconvert version
                if bs4.css.soupsieve is None:
                    bs4.css.soupsieve = importlib.import_module("soupsieve")
                return super().select(selector, *args, **kwargs)
            return self.find_all(match)

    setattr(html_module, "BeautifulSoup", Soup)  # noqa: B010  (this process renders pages only)
    exporter = html_module.HTMLExporter(template_name="lab")
    exporter.environment.bytecode_cache = _bytecode_cache()
    exporter.from_notebook_node(_warm_up_notebook())
    return exporter


def render_page(exporter: Any, nb: Any, record: Mapping[str, Any] | None = None) -> str:
    """The page of ``nb``: titled by its stage, code folded when it ran to the end (a
    failed run's page shows its code), ``record`` embedded."""
    failed = any(o.get("output_type") == "error" for c in nb.cells
                 for o in c.get("outputs", []))
    title = str(nb.metadata.get("nbpipeline", {}).get("stage") or _stage_of(nb))
    title += " (failed)" if failed else ""
    body, _ = exporter.from_notebook_node(
        _for_reading(nb, record), resources={"metadata": {"name": escape(title)}})
    return _decorate(str(body), record, fold=not failed)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The helper's main loop: warm up, then answer each request line (a JSON ``{"nb": ...,
    "record": ...}``) with a JSON header line (``{"bytes": n}`` or ``{"error": "..."}``)
    and the page's n bytes of UTF-8. Returns at the end of ``requests``."""
    sys.stdout.flush()
    os.dup2(2, 1)  # what the libraries print goes to stderr, not to `nbp run`'s stdout
    try:
        exporter, problem = html_exporter(), ""
    except Exception as exc:  # reported with each request
        exporter, problem = None, f"{type(exc).__name__}: {exc}"
    for line in requests:
        page = b""
        header: dict[str, object] = {"error": problem}
        if exporter is not None:
            try:
                request = json.loads(line)
                nb = lean.nbformat().from_dict(request["nb"])
                page = render_page(exporter, nb, request["record"]).encode("utf-8")
                header = {"bytes": len(page)}
            except Exception as exc:
                header = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(header).encode() + b"\n" + page)
        replies.flush()


# A fresh interpreter, for a parent with threads (a child forked from one could inherit a
# lock another thread held).
_SPAWN = ("import os, sys; from nbpipeline.pipeline.stage_page import serve; "
          "serve(sys.stdin.buffer, os.fdopen(os.dup(1), 'wb')); os._exit(0)")


class PageRenderer:
    """A stage's pages, rendered by a helper process started at once (module docstring).

    The helper is forked from `nbp run` while it has one thread (as it does before its
    kernel starts): it inherits the modules already imported (nbformat and its compiled
    schema validator, nbpipeline), ~0.2 s of CPU a fresh interpreter would spend again.
    :meth:`render` waits for the helper's warm-up if it is not done; :meth:`close` ends
    the helper (also as a context manager).
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = 0
        if threading.active_count() == 1:
            self._fork()
        else:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _SPAWN], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert self._process.stdin is not None and self._process.stdout is not None
            self._requests, self._replies = self._process.stdin, self._process.stdout

    def _fork(self) -> None:
        child_in, requests = os.pipe()
        replies, child_out = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write what is buffered a second time
        self._pid = os.fork()
        if self._pid == 0:  # the helper
            try:
                os.close(requests)
                os.close(replies)
                serve(os.fdopen(child_in, "rb"), os.fdopen(child_out, "wb"))
            finally:
                os._exit(0)  # never back into the caller's code
        os.close(child_in)
        os.close(child_out)
        self._requests, self._replies = os.fdopen(requests, "wb"), os.fdopen(replies, "rb")

    @property
    def _running(self) -> bool:
        return bool(self._pid or self._process)

    def render(self, nb: Any, record: Mapping[str, Any] | None = None) -> str:
        """The page of ``nb`` with ``record`` (see :func:`render_page`)."""
        if not self._running:
            raise StageError("cannot render HTML reports: the page renderer is closed")
        try:
            self._requests.write(json.dumps({"nb": nb, "record": record}).encode() + b"\n")
            self._requests.flush()
            header = json.loads(self._replies.readline())
            page = self._replies.read(header.get("bytes", 0))
        except (OSError, ValueError) as exc:
            raise StageError(f"cannot render HTML reports: the page renderer stopped ({exc})"
                             ) from exc
        if "error" in header:
            raise StageError(f"cannot render HTML reports: {header['error']}")
        return page.decode("utf-8")

    def close(self) -> None:
        """End the helper and reap it (idempotent). It is killed: between requests it holds
        nothing worth finishing, and a run that fails before its first page need not wait
        for the helper's warm-up."""
        if not self._running:
            return
        for stream in (self._requests, self._replies):
            try:
                stream.close()
            except OSError:  # it died: nothing to tell it
                pass
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        else:
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
        self._process, self._pid = None, 0

    def __enter__(self) -> PageRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
