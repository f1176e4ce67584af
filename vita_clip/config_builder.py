"""Typed config dataclasses from plain data: the one builder of every config in the package.

Model configs (:mod:`vita_clip.models.config`), data sections (:mod:`vita_clip.data.config`)
and run configs (:mod:`vita_clip.engine.config`) are plain dataclasses. :func:`build` makes one
from a (nested) dict, checking every value against the field's type hint and naming the
dotted key of anything unknown or wrong (``optim.lr: expected a number, got 'x'``);
:func:`config_to_dict` turns one back into builtins (YAML, checkpoints). Command-line
overrides are dotted ``key=value`` strings read as YAML (:func:`apply_overrides`).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigLoader(yaml.SafeLoader):
    """YAML as a user types numbers: YAML 1.1 (PyYAML) reads ``1e-3`` and ``5e-5`` as strings
    (it wants ``1.0e-3``); here any decimal with an exponent, a dot or ``_`` separators is a
    float (``1_000`` stays an int)."""


ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    ConfigLoader.yaml_implicit_resolvers[_first] = [
        (tag, regexp) for tag, regexp in ConfigLoader.yaml_implicit_resolvers.get(_first, [])
        if tag != "tag:yaml.org,2002:float"]
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """``yaml.safe_load`` with :class:`ConfigLoader`'s numbers."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def build(cls, values: dict, prefix: str = ""):
    """``cls`` from a (nested) dict; every unknown key or bad value names its dotted path."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; known keys here: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def _coerce(value: Any, hint: Any, path: str):
    """Check ``value`` against a type hint, converting where YAML's types differ (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return build(hint, value, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is Any or origin is dict or hint is dict:
        if (origin is dict or hint is dict) and not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (``["optim", "lr"]``, 0.001); values are read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: cannot read the value: {err}") from err
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    values = _deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return values


def _deepcopy(values):
    if isinstance(values, dict):
        return {k: _deepcopy(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_deepcopy(v) for v in values]
    return values


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        values = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    base = values.pop("base", None)
    if base is not None:  # configs may extend another one, relative to their own folder
        values = merge(read_yaml(path.parent / base), values)
    return values


def merge(base: dict, update: dict) -> dict:
    out = _deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = _deepcopy(value)
    return out



def config_to_dict(config) -> dict[str, Any]:
    """A (nested) config as plain builtins, tuples as lists: safe for YAML and for
    ``torch.load(weights_only=True)``."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def replace(config, **overrides):
    """``dataclasses.replace`` that accepts nested dicts (``text={"n_ctx": 16}``) and names unknown keys."""
    values = dataclasses.asdict(config)
    for key, value in overrides.items():
        if key not in values:
            raise ValueError(f"unknown config key {key!r} for {type(config).__name__}; known keys: {sorted(values)}")
        if isinstance(values[key], dict) and isinstance(value, dict):
            values[key] = {**values[key], **value}
        elif dataclasses.is_dataclass(value):
            values[key] = dataclasses.asdict(value)
        else:
            values[key] = value
    return build(type(config), values)
