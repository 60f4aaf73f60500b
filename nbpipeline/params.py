"""params.yaml: loading it and choosing the values one stage receives.

Layout of params.yaml::

    common:   {seed: 42, ...}          # shared by every stage (optional)
    paths:    {train_path: data/train.parquet, ...}   # named files, used by dvc.yaml as ${paths.x}
    <stage>:  {max_iter: 200, ...}     # one section per notebook stage

A stage receives exactly the names its notebook's ``parameters`` cell declares. Each
name is looked up in this order (the one place the override order is defined):
the stage's section, then ``common``, then ``paths``. Every key of the stage's own
section must be declared by the notebook (otherwise changing it would re-run the
stage for nothing and the notebook would silently ignore it), and every declared name
must be found. Values must have the type of the notebook's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nbpipeline.errors import ParamsError

SHARED_SECTIONS = ("common", "paths")
# libyaml's parser when PyYAML was built with it: the example's dvc.lock took 12 ms of CPU
# with the pure-Python loader, 1.5 ms with this one (same results)
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, with libyaml's parser when it is available."""
    return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 (a safe loader)


def load_params(path: Path) -> dict[str, Any]:
    """Read params.yaml; a missing file is empty, a malformed one is a ParamsError."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        raise ParamsError(
            f"{where}: malformed YAML ({exc.problem}); fix the syntax at that line"
        ) from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path.name}: malformed YAML ({exc}); fix the file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path.name}: top level must be a mapping of sections (common:, <stage>:), "
            f"found {type(data).__name__}"
        )
    for name in SHARED_SECTIONS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ParamsError(f"{path.name}: section '{name}' must be a mapping")
    return data


def _section(params: Mapping[str, Any], name: str, file: str) -> Mapping[str, Any]:
    section = params.get(name)
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ParamsError(
            f"{file}: section '{name}' must be a mapping of name: value, "
            f"found {type(section).__name__}"
        )
    return section


def type_name(value: Any) -> str:
    """A user-facing name for the type of ``value``."""
    names = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
    return names.get(type(value), type(value).__name__)


def check_type(name: str, default: Any, value: Any, *, where: str) -> Any:
    """Return ``value`` if it fits the notebook default's type, else raise ParamsError.

    Rules: a None default accepts anything; an int is accepted where a float is expected;
    bool and int never mix; a list default also accepts a single item (a one-value search).
    """
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) or isinstance(value, (int, float, str))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(
            f"{where}: parameter '{name}' is {type_name(value)} {value!r} but the notebook's "
            f"default is {type_name(default)} {default!r}; set it to a {type_name(default)} "
            "in params.yaml (or change the default in the parameters cell)"
        )
    return value


def stage_values(
    params: Mapping[str, Any],
    stage: str,
    declared: Mapping[str, Any],
    *,
    params_file: str = "params.yaml",
    notebook: str = "the notebook",
) -> dict[str, Any]:
    """The values stage ``stage`` receives for the names its notebook ``declared``.

    Raises ParamsError for unknown keys in the stage's section, declared names found
    nowhere, and values whose type differs from the notebook default.
    """
    own = _section(params, stage, params_file)
    common = _section(params, "common", params_file)
    paths = _section(params, "paths", params_file)
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ParamsError(
            f"{params_file} [{stage}]: unknown parameter(s) {', '.join(unknown)}: "
            f"{notebook}'s parameters cell does not declare them; add e.g. "
            f"`{unknown[0]} = ...` to that cell or remove them from params.yaml"
        )
    values: dict[str, Any] = {}
    missing = []
    for name, default in declared.items():
        for section_name, section in ((stage, own), ("common", common), ("paths", paths)):
            if name in section:
                where = f"{params_file} [{section_name}]"
                values[name] = check_type(name, default, section[name], where=where)
                break
        else:
            missing.append(name)
    if missing:
        raise ParamsError(
            f"{params_file}: missing parameter(s) {', '.join(missing)} for stage '{stage}' "
            f"(declared in {notebook}'s parameters cell); add them under `{stage}:` "
            f"(or `common:`), e.g. `{missing[0]}: {declared[missing[0]]!r}`"
        )
    return values
