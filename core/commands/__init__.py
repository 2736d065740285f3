"""Subcommands of ``launch.py`` that need only the engine.

Each module here defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``launch.py`` finds them all and adds the studio (``app``), which needs gradio and viser.
"""

import importlib
import pkgutil


def add_precision_argument(p) -> None:
    """``--precision`` of every command that runs the model, and of the studio (``Engine``'s)."""
    from ..engine import PRECISIONS

    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="auto (default: bf16 on CUDA and on CPUs with native bf16, else fp32), fp32 or bf16")


def add_compile_argument(p) -> None:
    """``--compile`` of ``generate`` and of the studio (``Engine``'s)."""
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's blocks: the first grid of each size and mode waits for the "
                        "compile (16-18 s on a 2-core CPU, which needs a C++ compiler; about a minute on a GPU), "
                        "later ones run faster (13-24%% a step on a 2-core CPU); falls back to uncompiled with "
                        "a warning where compiling fails")


def discover():
    """The command modules of this package, sorted by name."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return sorted(mods, key=lambda m: m.NAME)
