"""Import heavy libraries without the optional extras they never need here.

`nbp run` starts once per stage, so its import time is paid on every `dvc repro` step
(DESIGN.md: start-up dominates a small pipeline). Two libraries pull optional modules at
import that nbpipeline never uses:

* jsonschema (via nbformat) imports the format-checker extras (rfc3987_syntax builds a
  grammar: ~1 s; isoduration, webcolors, ...: ~0.5 s). nbformat's schema uses no formats.
* papermill imports its storage back-ends (pyarrow for HDFS: ~0.8 s, GCS, S3, Azure,
  GitHub), and requests (with urllib3, ssl, idna, charset_normalizer: about half of
  ``import papermill`` measured with cProfile) for http:// notebook paths. Stages read and
  write local files. requests is a placeholder module while papermill imports (its HTTP
  handler would fail if ever used); the real one imports normally afterwards. So is click
  (only papermill's command line uses it), and entrypoints is a stand-in that finds no
  entry points: papermill scans every installed distribution for third-party engines and
  I/O handlers at import (~25 ms each on a loaded 2-core machine), and `nbp run` uses its
  own engine on local files (~55 ms of `import papermill` in all).

Each is blocked only while that one import runs (``sys.modules[name] = None`` makes the
import fail fast, and the library skips the extra); afterwards the modules import normally.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

JSONSCHEMA_FORMAT_EXTRAS = (
    "rfc3987_syntax", "rfc3987", "rfc3339_validator", "rfc3986_validator", "isoduration",
    "webcolors", "jsonpointer", "uri_template", "fqdn",
)
PAPERMILL_BACKENDS = ("pyarrow", "gcsfs", "boto3", "azure", "github")
PAPERMILL_PLACEHOLDERS = ("requests", "click")  # imported unconditionally; http://, CLI only


def import_without(
    module: str, unused: tuple[str, ...], placeholders: tuple[str, ...] = (),
    replacements: tuple[ModuleType, ...] = (),
) -> ModuleType:
    """Import ``module`` while the top-level modules ``unused`` are made unimportable,
    those in ``placeholders`` are empty modules and ``replacements`` stand in for the
    modules of their names."""
    if module in sys.modules:
        return sys.modules[module]
    stand_ins: dict[str, ModuleType | None] = {name: None for name in unused}
    stand_ins.update((name, ModuleType(name)) for name in placeholders)
    stand_ins.update((replacement.__name__, replacement) for replacement in replacements)
    stand_ins = {name: value for name, value in stand_ins.items() if name not in sys.modules}
    sys.modules.update(stand_ins)  # type: ignore[arg-type]
    try:
        return importlib.import_module(module)
    finally:
        for name, value in stand_ins.items():
            if name in sys.modules and sys.modules[name] is value:
                del sys.modules[name]


def nbformat() -> ModuleType:
    """nbformat, without jsonschema's format-checker extras."""
    import_without("jsonschema", JSONSCHEMA_FORMAT_EXTRAS)
    return import_without("nbformat", JSONSCHEMA_FORMAT_EXTRAS)


def _no_entry_points() -> ModuleType:
    """An ``entrypoints`` module that finds no entry points."""
    module = ModuleType("entrypoints")
    module.get_group_all = lambda group, path=None: []  # type: ignore[attr-defined]
    return module


def papermill() -> ModuleType:
    """papermill, without its remote storage back-ends, CLI and entry-point scan."""
    nbformat()
    return import_without("papermill", PAPERMILL_BACKENDS + JSONSCHEMA_FORMAT_EXTRAS,
                          PAPERMILL_PLACEHOLDERS, (_no_entry_points(),))
