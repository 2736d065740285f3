"""Subcommands of ``launch.py`` that need only the engine.

Each module here defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``launch.py`` finds them all and adds the studio (``app``), which needs gradio and viser.
"""

import importlib
import pkgutil


def discover():
    """The command modules of this package, sorted by name."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return sorted(mods, key=lambda m: m.NAME)
