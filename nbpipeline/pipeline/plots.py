"""`dvc plots show` that renders offline, with counts on the confusion matrix.

DVC's HTML page loads vega from a CDN, so it is blank without network. :func:`install`
writes, into the project's ``.dvc/plots/`` (DVC's folder for custom plot templates):

* ``offline.html``: the page template (DVC config ``plots.html_template``), with vega,
  vega-lite and vega-embed inlined from the ``vl-convert-python`` package (~0.9 MB, no
  network at view time). DVC's plot scripts call ``vegaEmbed`` before the inlined module
  has run; the page queues those calls and replays them once it has.
* ``confusion_counts.json``: DVC's ``confusion`` template with the counts shown (DVC hides
  them behind a checkbox).
* ``bar_facets.json``: DVC's ``bar_horizontal`` template with one panel per value of the
  data's ``slice`` column (one slice family per chart, each with its own value axis);
  ``bar_examples.json`` the same with one panel per explained example (column ``why``).

Run by ``nbp init``; ``nbp plots setup`` for an existing project. Idempotent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from nbpipeline.project import Project, write_text_atomic

__all__ = ["HTML_TEMPLATE", "install", "offline_html", "templates"]

TEMPLATE_DIR = "plots"  # under .dvc/
HTML_TEMPLATE = "offline.html"  # plots.html_template, relative to .dvc/ as DVC resolves it
VEGA_LITE = "v5.21"  # DVC's templates declare vega-lite v5

_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<script>
// vega is inlined below as a module, which runs after the plots' own scripts: queue them
window.nbpPending = [];
window.vegaEmbed = function (el, spec, opts) { window.nbpPending.push([el, spec, opts]); };
</script>
<script type="module">
%s
</script>
<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""
_REPLAY = """window.vega = vega; window.vegaLite = vegaLite; window.vegaEmbed = vegaEmbed;
for (const [el, spec, opts] of window.nbpPending) {
  vegaEmbed(el, spec, Object.assign({renderer: "svg"}, opts));  // svg: text stays selectable
}
window.nbpPending = [];
"""


def offline_html() -> str:
    """The page template for ``dvc plots show`` with vega inlined."""
    import vl_convert  # ~0.5 s to import; only this command needs it

    bundle = vl_convert.javascript_bundle(_REPLAY, vl_version=VEGA_LITE)
    return _PAGE % bundle.replace("</script", "<\\/script")


def templates() -> dict[str, dict[str, Any]]:
    """Custom DVC plot templates by name, derived from DVC's own."""
    from dvc_render.vega_templates import BarHorizontalTemplate, ConfusionTemplate

    confusion = copy.deepcopy(ConfusionTemplate.DEFAULT_CONTENT)
    for param in confusion.get("params", []):
        if param.get("name") == "showValues":
            param["value"] = True
    return {"confusion_counts": confusion, "bar_facets": _facets(BarHorizontalTemplate, "slice"),
            "bar_examples": _facets(BarHorizontalTemplate, "why")}


def _facets(bar_horizontal: Any, field: str) -> dict[str, Any]:
    """DVC's ``bar_horizontal`` template with one panel per value of the data's ``field``."""
    facets = copy.deepcopy(bar_horizontal.DEFAULT_CONTENT)
    facets["encoding"]["row"] = {"field": field, "type": "nominal", "title": None,
                                 "header": {"labelAngle": 0, "labelAlign": "left"}}
    facets["resolve"] = {"scale": {"y": "independent"}}
    facets["height"] = {"step": 16}  # a fixed height squeezes the bars of a long family
    facets["encoding"]["x"]["scale"] = {"zero": True}
    return facets


def install(project: Project) -> list[str]:
    """Write the offline page and the templates into ``.dvc/plots`` and point DVC's config
    at the page. Returns one line per file or setting changed."""
    from dvc.config import Config

    dvc_dir = project.root / ".dvc"
    folder = dvc_dir / TEMPLATE_DIR
    wanted = {f"{name}.json": json.dumps(content, indent=2) + "\n"
              for name, content in templates().items()}
    wanted[HTML_TEMPLATE] = offline_html()
    changed = [f".dvc/{TEMPLATE_DIR}/{name}" for name, text in wanted.items()
               if _write_if_changed(folder / name, text)]
    setting = f"{TEMPLATE_DIR}/{HTML_TEMPLATE}"
    config = Config(dvc_dir=str(dvc_dir))
    if config.get("plots", {}).get("html_template") != setting:
        with config.edit("repo") as conf:
            conf["plots"]["html_template"] = setting
        changed.append(f".dvc/config: plots.html_template = {setting}")
    return changed


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True
