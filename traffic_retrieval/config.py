"""Dataclass configs loadable from YAML and overridable by CLI flags.

Every command has one dataclass; a YAML file gives values for its fields, flags
given on the command line win, and unknown keys or wrong types are one-line
errors naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import TrafficRetrievalError

ConfigT = TypeVar("ConfigT")


def _coerce(value: Any, annotation: Any, key: str, source: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except TrafficRetrievalError as exc:
                errors.append(str(exc))
        raise TrafficRetrievalError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TrafficRetrievalError(f"{source}: key {key!r} must be a list, got {type(value).__name__}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TrafficRetrievalError(f"{source}: key {key!r} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TrafficRetrievalError(f"{source}: key {key!r} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "4e-7" as a string
            except ValueError:
                pass
        raise TrafficRetrievalError(f"{source}: key {key!r} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TrafficRetrievalError(f"{source}: key {key!r} must be a string, got {value!r}")
    if annotation is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise TrafficRetrievalError(f"{source}: key {key!r} must be a path, got {value!r}")
    return value


def config_from_dict(cls: type[ConfigT], values: dict, source: str = "config") -> ConfigT:
    """Build ``cls`` from a dict, checking keys and types."""
    if not isinstance(values, dict):
        raise TrafficRetrievalError(f"{source}: expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        raise TrafficRetrievalError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(fields))})")
    kwargs = {key: _coerce(value, hints[key], key, source) for key, value in values.items()}
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TrafficRetrievalError(f"{source}: missing required key {missing[0]!r}")
    return cls(**kwargs)


def _unique_key_loader():
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            first_line: dict[str, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in first_line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r} (first on line {first_line[key_node.value]})", key_node.start_mark
                        )
                    first_line[key_node.value] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrafficRetrievalError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise TrafficRetrievalError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise TrafficRetrievalError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        values = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TrafficRetrievalError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TrafficRetrievalError(f"{path}: expected a mapping of keys to values at the top level")
    return values


PRESET_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset shipped with the package (``cpu-tiny``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise TrafficRetrievalError(f"{name_or_path}: config file not found (presets: {presets})")


def build_config(cls: type[ConfigT], yaml_path: str | Path | None, overrides: dict, base: dict | None = None) -> ConfigT:
    """Defaults < ``base`` < YAML file < flags given on the command line (``None`` = not given)."""
    values = dict(base or {})
    source = "config"
    if yaml_path is not None:
        path = resolve_config_path(yaml_path)
        values.update(read_yaml(path))
        source = str(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(cls, values, source)


def config_to_dict(config) -> dict:
    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
