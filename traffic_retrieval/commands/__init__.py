"""The jobs: one module per command, each with its config dataclass and a ``run()``.

A command module holds a docstring, ``HELP`` (one line for ``--help``), ``Config``
(the dataclass whose fields are the command's flags and YAML keys), an optional
``PRESET`` (the YAML preset used when ``--config`` is not given), ``run(config)``
(the job: takes the config, returns data) and ``print_result(result, config)``
(the lines the CLI prints). Jobs sit above every library package; nothing in a
library imports them. Module tops import only light modules, so ``--help`` is
instant.
"""

COMMANDS = ("synth", "prepare", "train", "predict", "evaluate", "augment", "soup", "ablate", "demo", "index", "search", "serve")
