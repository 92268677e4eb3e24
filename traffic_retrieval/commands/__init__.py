"""The jobs: one module per command, each with its config dataclass and a ``run()``.

A command module holds a docstring, ``HELP`` (one line for ``--help``), ``Config``
(the dataclass whose fields are the command's flags and YAML keys), an optional
``PRESET`` (the YAML preset used when ``--config`` is not given), ``run(config)``
(the job: takes the config, returns data) and ``print_result(result, config)``
(the lines the CLI prints). Jobs sit above every library package; nothing in a
library imports them. Module tops import only light modules, so ``--help`` is
instant.
"""

COMMANDS = ("synth", "prepare", "train", "augment", "predict", "queries", "evaluate", "soup", "ablate", "demo", "index", "search", "serve",
            "export", "export-embeddings")


def module_name(command: str) -> str:
    """The module under ``commands/`` that holds ``command`` (``export-embeddings`` -> ``export_embeddings``)."""
    return command.replace("-", "_")


def command_config_keys() -> dict[str, set[str]]:
    """Every command's top-level config keys (a pipeline YAML's shared keys must belong to one)."""
    import dataclasses
    import importlib

    return {name: {f.name for f in dataclasses.fields(importlib.import_module(f"{__name__}.{module_name(name)}").Config)} for name in COMMANDS}


def command_config(name: str, yaml_or_preset=None, overrides: dict | None = None):
    """Command ``name``'s config from a YAML file or preset (pipeline presets included) and
    overrides, as the CLI builds it: ``command_config("train", "a3r-vit-bigg", {"epochs": 1})``."""
    import importlib

    from ..config import build_config

    module = importlib.import_module(f"{__name__}.{module_name(name)}")
    return build_config(module.Config, yaml_or_preset, overrides or {}, command=name, command_keys=command_config_keys())
