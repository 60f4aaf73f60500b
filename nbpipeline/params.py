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

from nbpipeline import yamlio
from nbpipeline.errors import ParamsError

SHARED_SECTIONS = ("common", "paths")
def load_params(path: Path) -> dict[str, Any]:
    """Read params.yaml as DVC does; a missing file is empty, a malformed one a ParamsError.

    Refused: malformed YAML, a key given twice in one mapping (naming both lines), a
    top level or shared section that is not a mapping, and keys that are not names.
    """
    data = yamlio.read(path, ParamsError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path.name}: top level must be a mapping of sections (common:, <stage>:), "
            f"found {type_name(data)}"
        )
    for name, section in data.items():
        if not isinstance(name, str):
            raise ParamsError(f"{path.name}: top-level key {name!r} is not a name; sections "
                              "are named like stages (common:, paths:, train:)")
        if name in SHARED_SECTIONS and section is not None and not isinstance(section, dict):
            raise ParamsError(f"{path.name}: section '{name}' must be a mapping")
        bad = [key for key in section if not isinstance(key, str)] if isinstance(
            section, dict) else []
        if bad:
            raise ParamsError(f"{path.name}: [{name}] key {bad[0]!r} is not a parameter "
                              "name; parameter names are words (max_depth:), quote it if needed")
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


def _a(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def type_name(value: Any) -> str:
    """A user-facing name for the type of ``value``."""
    names = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping",
             tuple: "list", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class _Mismatch(Exception):
    """``value`` at ``path`` (e.g. ``[1]``) does not fit ``default``."""

    def __init__(self, path: str, default: Any, value: Any) -> None:
        super().__init__(path)
        self.path, self.default, self.value = path, default, value


def _scalar_fits(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _one_of(defaults: list[Any], value: Any, path: str) -> Any:
    """``value`` checked against the first of ``defaults`` it fits (any, if none are given)."""
    kinds = [d for d in defaults if d is not None]
    if value is None or not kinds:
        return value
    for default in kinds:
        try:
            return _conform(default, value, path)
        except _Mismatch as exc:
            if exc.path != path:  # it has the right shape, an item inside is wrong
                raise
    raise _Mismatch(path, kinds[0], value)


def _conform(default: Any, value: Any, path: str = "") -> Any:
    """``value`` made to fit ``default``'s type (int -> float); _Mismatch if it cannot.

    Lists and mappings are checked item by item: each item must fit one of the default's
    items (a mapping key the default has: its own default).
    """
    if default is None or value is None:
        return value
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return [_one_of(list(default), item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, (int, float, str)):  # one value where a list is expected
            return _one_of(list(default), value, path)
        raise _Mismatch(path, default, value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise _Mismatch(path, default, value)
        return {
            key: (_conform(default[key], item, f"{path}.{key}") if key in default
                  else _one_of(list(default.values()), item, f"{path}.{key}"))
            for key, item in value.items()
        }
    if not _scalar_fits(default, value):
        raise _Mismatch(path, default, value)
    return float(value) if isinstance(default, float) else value


def check_type(name: str, default: Any, value: Any, *, where: str) -> Any:
    """Return ``value`` if it fits the notebook default's type, else raise ParamsError.

    Rules: a None default accepts anything and None is accepted anywhere; an int is
    accepted where a float is expected (and becomes a float); bool and int never mix; a
    list default also accepts a single item (a one-value search); every item of a list
    (and every value of a mapping) must fit one of the default's items.
    """
    try:
        return _conform(default, value)
    except _Mismatch as exc:
        if not exc.path:
            raise ParamsError(
                f"{where}: parameter '{name}' is {type_name(value)} {value!r} but the "
                f"notebook's default is {type_name(default)} {default!r}; set it to "
                f"{_a(type_name(default))} in params.yaml (or change the default in the "
                "parameters cell)"
            ) from None
        raise ParamsError(
            f"{where}: parameter '{name}' item {exc.path} is {type_name(exc.value)} "
            f"{exc.value!r} but the notebook's default {default!r} has {type_name(exc.default)}"
            f" items there; make it {_a(type_name(exc.default))} in params.yaml (or change the "
            "default in the parameters cell)"
        ) from None


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
