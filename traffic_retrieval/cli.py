"""The ``traffic-retrieval`` command: a thin map from subcommand names to the jobs in
``commands/``. Every command's flags, defaults and help come from its config
dataclass (``config.add_config_arguments``); every command takes ``--config YAML``.

Heavy libraries (torch, open_clip, FastAPI) are imported inside the jobs, so
``--help`` is instant. A ``TrafficRetrievalError`` becomes ``error: <message>``
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys


# third-party modules of the optional extras (pyproject.toml) -> the extra that installs them
OPTIONAL_MODULES = {"fastapi": "serve", "uvicorn": "serve", "pydantic": "serve", "starlette": "serve", "prometheus_client": "serve",
                    "python_multipart": "serve", "multipart": "serve", "matplotlib": "curves", "pyarrow": "export"}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's usage errors as one line, like every other error of the tool."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def command_module(name: str):
    from .commands import module_name

    return importlib.import_module(f"{__package__}.commands.{module_name(name)}")


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS
    from .config import add_config_arguments

    parser = OneLineErrorParser(prog="traffic-retrieval", description="Text-to-image retrieval for traffic scenes (pedestrians and vehicles) with open_clip.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser)
    for name in COMMANDS:
        module = command_module(name)
        description = (module.__doc__ or module.HELP).strip()
        p = commands.add_parser(name, help=module.HELP, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        preset = getattr(module, "PRESET", None)
        p.add_argument("--config", help=f"YAML file or preset name with {module.Config.__name__} keys; flags given win"
                                         + (f" (default preset: {preset})" if preset else ""))
        add_config_arguments(p, module.Config)
        p.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from .commands import command_config_keys
    from .config import config_from_args
    from .errors import TrafficRetrievalError

    args = build_parser().parse_args(argv)
    # open_clip logs a warning for every randomly initialised model; our outputs say what happened.
    logging.basicConfig(level=logging.ERROR)
    module = args.module
    try:
        config = config_from_args(module.Config, args, preset=getattr(module, "PRESET", None), command=args.command, command_keys=command_config_keys())
        module.print_result(module.run(config), config)
    except TrafficRetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused a path the user gave (not a directory, no space, ...)
        path = exc.filename2 or exc.filename  # a failed rename names the destination second
        reason = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror or exc
        print(f"error: {path}: {reason}" if path else f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return TrafficRetrievalError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # an optional part the install left out
        extra = OPTIONAL_MODULES.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: {args.command} needs {exc.name.split('.')[0]}, which is not installed: pip install 'traffic-retrieval[{extra}]'", file=sys.stderr)
        return TrafficRetrievalError.exit_code
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
