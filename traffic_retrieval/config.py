"""Dataclass configs from one source: YAML files, command-line flags and code.

Every command has one dataclass (``commands/*.py``). Its fields say everything
about a setting once: the type (``options.py``'s ``Literal`` and ``Annotated``
types, nested dataclasses, paths, numbers), the default, the help text and the
allowed range (``option(..., minimum=1)``). From that one declaration:

- ``config_from_dict`` builds and validates a config (YAML, flags and code all
  pass through it), with one-line errors naming the key;
- ``add_config_arguments`` generates the command's flags, defaults and help;
- ``config_from_args`` merges defaults < preset/YAML < flags given.

A nested dataclass is a YAML mapping (``rerank: {candidates: 50}``) and flags
with its prefix (``--rerank-candidates``).

A *pipeline* YAML (a preset such as ``a3r-vit-bigg``) configures every command at
once: it has a ``commands:`` mapping of per-command sections (``train: {...}``,
``predict: {...}``), and its top-level keys go to every command that has them
(``query: {text_form: a3r}`` reaches train, predict, search, serve and queries).
A top-level key that no command has, or a section key its command does not have,
is an error; a file without ``commands:`` is one command's config, checked as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import TrafficRetrievalError
from .options import Device, Pattern, Precision

ConfigT = TypeVar("ConfigT")


def option(default: Any = dataclasses.MISSING, *, help: str = "", minimum: float | None = None, maximum: float | None = None,
           positive: bool = False, flag: str | None = None, short: str | None = None, positional: bool = False,
           metavar: str | None = None, cli: bool = True, default_factory: Any = dataclasses.MISSING):
    """A config field with what the config layer needs to check it and make its flag.

    ``minimum``/``maximum``: inclusive range; ``positive``: a finite number above 0;
    ``flag``: the flag name when it is not ``--field-name`` (``--rerank``); ``short``:
    an extra short flag (``-k``); ``positional``: a positional argument; ``cli=False``:
    settable from YAML and code only.
    """
    metadata = {"help": help, "minimum": minimum, "maximum": maximum, "positive": positive, "flag": flag, "short": short,
                "positional": positional, "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# -- settings shared by several commands (declared once, inherited) --------------------
@dataclass
class RuntimeOptions:
    """Where a model runs and in which precision: every command that runs a model."""

    device: Device = option("auto", help="where the model runs (auto: cuda when available; under torchrun, cuda is this rank's GPU)")
    precision: Precision = option("auto", help="autocast (auto: bf16 where the hardware has it, fp16 on GPUs without it; fp32: none)")


@dataclass
class ReaderOptions:
    """How a command reads and encodes images: batches, decoding processes, progress bars."""

    batch_size: int = option(256, minimum=1, help="images per encoding batch")
    workers: int = option(2, minimum=0, help="image decoding processes")
    progress: bool = option(True, help="progress bars")


@dataclass
class CheckpointTrust:
    """Whether a checkpoint's architecture may make open_clip load code, weights, configs or a
    tokenizer from elsewhere (a checkpoint is data: by default it may not)."""

    trust_checkpoint: bool = option(False, help="let the checkpoint's architecture load from elsewhere (hf-hub:, local-dir:, timm, "
                                                "Hugging Face towers and tokenizers); only for checkpoints whose author you trust")


@dataclass
class ModelSource(CheckpointTrust):
    """The model a command encodes with: a trained checkpoint, or an open_clip model zero-shot."""

    checkpoint: Path | None = option(None, help="a traffic-retrieval checkpoint")
    model: str | None = option(None, help="zero-shot: open_clip model name (or hf-hub:ORG/REPO) instead of a checkpoint")
    pretrained: str | None = option(None, help="zero-shot: open_clip pretrained tag or weights file (an hf-hub: id goes in --model)")


# -- types -------------------------------------------------------------------------
def _unwrap_optional(annotation):
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1 and len(options) < len(typing.get_args(annotation)):
            return options[0], True
    return annotation, False


def _pattern(annotation) -> Pattern | None:
    if typing.get_origin(annotation) is typing.Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, Pattern)), None)
    return None


def choices_of(annotation) -> tuple | None:
    """The allowed values of a ``Literal`` field (optional or not), else None."""
    annotation, _ = _unwrap_optional(annotation)
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def _describe_choices(choices) -> str:
    return ", ".join(str(c) for c in choices)


def _coerce(value: Any, annotation: Any, key: str, source: str):
    inner, optional = _unwrap_optional(annotation)
    if optional:
        return None if value is None else _coerce(value, inner, key, source)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option_type in typing.get_args(annotation):
            try:
                return _coerce(value, option_type, key, source)
            except TrafficRetrievalError as exc:
                errors.append(str(exc))
        raise TrafficRetrievalError(errors[0])
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise TrafficRetrievalError(f"{key} must be one of {_describe_choices(choices)}, got {value!r}")
    if origin is typing.Annotated:
        coerced = _coerce(value, typing.get_args(annotation)[0], key, source)
        pattern = _pattern(annotation)
        if pattern is not None:
            import re

            if not re.fullmatch(pattern.regex, coerced):
                raise TrafficRetrievalError(f"{key} must be {pattern.describe}, got {coerced!r}")
        return coerced
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TrafficRetrievalError(f"{source}: key {key!r} must be a list, got {type(value).__name__}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return config_from_dict(annotation, value, source, prefix=f"{key}.")
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


def _check_range(value, metadata, key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if metadata.get("positive") and not (math.isfinite(value) and value > 0):
        raise TrafficRetrievalError(f"{key} must be a positive number, got {value}")
    minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
    if minimum is not None and not (math.isfinite(value) and value >= minimum):
        raise TrafficRetrievalError(f"{key} must be {'zero or more' if minimum == 0 else f'at least {minimum}'}, got {value}")
    if maximum is not None and not value <= maximum:
        raise TrafficRetrievalError(f"{key} must be at most {maximum}, got {value}")


def config_from_dict(cls: type[ConfigT], values: dict, source: str = "config", prefix: str = "") -> ConfigT:
    """Build ``cls`` from a dict, checking keys, types and ranges (nested dataclasses too);
    then the dataclass's own ``__post_init__`` checks what spans several fields."""
    if not isinstance(values, dict):
        raise TrafficRetrievalError(f"{source}: expected a mapping of keys to values" + (f" for {prefix[:-1]!r}" if prefix else ""))
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        name = unknown[0] if not prefix else f"{prefix}{unknown[0]}"
        raise TrafficRetrievalError(f"{source}: unknown key {name!r} (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key, source)
        _check_range(kwargs[key], fields[key].metadata, prefix + key)
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TrafficRetrievalError(f"{source}: missing required key {prefix + missing[0]!r}")
    return cls(**kwargs)


def checked(config: ConfigT) -> ConfigT:
    """A config made in code, checked as one read from YAML would be."""
    return config_from_dict(type(config), config_to_dict(config, plain=False))


# -- YAML --------------------------------------------------------------------------
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

    from .io import read_input_text

    path = Path(path)
    text = read_input_text(path, "config file")
    try:
        values = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TrafficRetrievalError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise TrafficRetrievalError(f"{path}: invalid YAML (nested too deeply)") from None
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


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _drop_unset(overrides: dict) -> dict:
    """Flags not given (None), recursively; an empty nested mapping disappears."""
    kept = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = _drop_unset(value)
            if not value:
                continue
        if value is not None:
            kept[key] = value
    return kept


PIPELINE_SECTIONS = "commands"


def pipeline_values(values: dict, command: str | None, cls, command_keys: dict[str, set[str]], source: str) -> dict:
    """The values a pipeline YAML gives ``command`` (see the module docstring); ``command_keys``:
    every command's top-level config keys."""
    sections = values[PIPELINE_SECTIONS]
    if not isinstance(sections, dict):
        raise TrafficRetrievalError(f"{source}: {PIPELINE_SECTIONS!r} must map command names to their settings")
    for name, section in sections.items():
        if name not in command_keys:
            raise TrafficRetrievalError(f"{source}: unknown command {name!r} under {PIPELINE_SECTIONS!r} (commands: {', '.join(command_keys)})")
        if not isinstance(section, dict):
            raise TrafficRetrievalError(f"{source}: {PIPELINE_SECTIONS}.{name} must be a mapping of keys to values")
    anywhere = set().union(*command_keys.values()) if command_keys else set()
    own = {f.name for f in dataclasses.fields(cls)}
    shared = {}
    for key, value in values.items():
        if key == PIPELINE_SECTIONS:
            continue
        if key not in anywhere:
            raise TrafficRetrievalError(f"{source}: unknown key {key!r} (no command has it)")
        if key in own:
            shared[key] = value
    return _merge(shared, sections.get(command) or {})


def build_config(cls: type[ConfigT], yaml_path: str | Path | None, overrides: dict, base: dict | None = None,
                 command: str | None = None, command_keys: dict[str, set[str]] | None = None) -> ConfigT:
    """Defaults < ``base`` < YAML file (or preset) < flags given on the command line (``None`` = not given).
    ``command`` and ``command_keys`` (every command's keys) let a pipeline YAML configure ``command``."""
    values = dict(base or {})
    source = "config"
    if yaml_path is not None:
        path = resolve_config_path(yaml_path)
        file_values = read_yaml(path)
        if PIPELINE_SECTIONS in file_values and PIPELINE_SECTIONS not in {f.name for f in dataclasses.fields(cls)}:
            command_keys = command_keys if command_keys is not None else {command or "": {f.name for f in dataclasses.fields(cls)}}
            file_values = pipeline_values(file_values, command or "", cls, command_keys, str(path))
        values = _merge(values, file_values)
        source = str(path)
    values = _merge(values, _drop_unset(overrides))
    return config_from_dict(cls, values, source)


def config_to_dict(config, plain: bool = True) -> dict:
    """A config as a mapping (nested dataclasses as nested mappings); ``plain``: paths as strings, lists for tuples (YAML)."""

    def convert(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return config_to_dict(value, plain)
        if plain and isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            items = [convert(v) for v in value]
            return items if plain or isinstance(value, list) else tuple(items)
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


# -- flags ---------------------------------------------------------------------------
def _flag_fields(cls, prefix: str = ""):
    """``(dest path, field, annotation)`` for every field reachable by a flag, nested ones flattened."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        inner, _ = _unwrap_optional(annotation)
        if dataclasses.is_dataclass(inner):
            yield from _flag_fields(inner, prefix + f.name + ".")
        elif f.metadata.get("cli", True):
            yield prefix + f.name, f, annotation


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING and f.default is not None and f.default != "" and not isinstance(f.default, bool):
        return str(f.default)
    return None


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (nested fields with their prefix), with help, default and
    choices taken from the declaration. Every flag defaults to None (= not given), so YAML
    values and the dataclass defaults apply."""
    for path, f, annotation in _flag_fields(cls):
        dest = path.replace(".", "__")
        metadata = f.metadata
        help_text = metadata.get("help", "")
        choices = choices_of(annotation)
        inner, _ = _unwrap_optional(annotation)
        if typing.get_origin(inner) is typing.Annotated:
            pattern = _pattern(inner)
            inner = typing.get_args(inner)[0]
            if pattern is not None:
                help_text += f" ({pattern.describe})"
        if choices:
            help_text += f" ({' | '.join(str(c) for c in choices)})"
        default = _default_text(f)
        if default is not None and not choices:
            help_text += f" (default {default})"
        elif default is not None:
            help_text = help_text[:-1] + f"; default {default})"
        if metadata.get("positional"):
            many = typing.get_origin(inner) in (list, tuple)
            item = (typing.get_args(inner) or (str,))[0] if many else inner
            parser.add_argument(dest, nargs="+" if many else None, type=item, help=help_text, metavar=metadata.get("metavar") or f.name.upper())
            continue
        names = [metadata.get("flag") or "--" + path.replace(".", "-").replace("_", "-")]
        if metadata.get("short"):
            names.insert(0, metadata["short"])
        kwargs: dict[str, Any] = {"dest": dest, "default": None, "help": help_text or None}
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) in (list, tuple):
            kwargs.update(action="extend", nargs="+", type=(typing.get_args(inner) or (str,))[0])  # --x a b and --x a --x b alike
        elif choices:
            kwargs.update(type=type(choices[0]), metavar="{" + ",".join(str(c) for c in choices) + "}")
        elif inner in (int, float, str, Path):
            kwargs["type"] = inner
        if metadata.get("metavar"):
            kwargs["metavar"] = metadata["metavar"]
        parser.add_argument(*names, **kwargs)


def overrides_from_args(cls, args: argparse.Namespace) -> dict:
    """The flags given, as a (nested) mapping of config keys; flags not given are None."""
    overrides: dict = {}
    for path, _, _ in _flag_fields(cls):
        value = getattr(args, path.replace(".", "__"), None)
        target = overrides
        *parents, name = path.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[name] = value
    return overrides


def config_from_args(cls: type[ConfigT], args: argparse.Namespace, preset: str | None = None, command: str | None = None,
                     command_keys: dict[str, set[str]] | None = None) -> ConfigT:
    """Defaults < ``preset`` < ``--config`` YAML < flags given."""
    return build_config(cls, getattr(args, "config", None) or preset, overrides_from_args(cls, args), command=command, command_keys=command_keys)
