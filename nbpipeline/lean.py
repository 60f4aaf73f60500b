"""Import heavy libraries without the optional extras they never need here.

`nbp run` starts once per stage, so its import time is paid on every `dvc repro` step
(DESIGN.md: start-up dominates a small pipeline). Two libraries pull optional modules at
import that nbpipeline never uses:

* jsonschema (via nbformat) imports the format-checker extras (rfc3987_syntax builds a
  grammar: ~1 s; isoduration, webcolors, ...: ~0.5 s). nbformat's schema uses no formats.
* papermill imports its storage back-ends (pyarrow for HDFS: ~0.8 s, GCS, S3, Azure,
  GitHub). Stages read and write local files.

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


def import_without(module: str, unused: tuple[str, ...]) -> ModuleType:
    """Import ``module`` while the top-level modules ``unused`` are made unimportable."""
    if module in sys.modules:
        return sys.modules[module]
    blocked = [name for name in unused if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(module)
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def nbformat() -> ModuleType:
    """nbformat, without jsonschema's format-checker extras."""
    import_without("jsonschema", JSONSCHEMA_FORMAT_EXTRAS)
    return import_without("nbformat", JSONSCHEMA_FORMAT_EXTRAS)


def papermill() -> ModuleType:
    """papermill, without its remote storage back-ends."""
    nbformat()
    return import_without("papermill", PAPERMILL_BACKENDS + JSONSCHEMA_FORMAT_EXTRAS)
