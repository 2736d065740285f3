#!/usr/bin/env python3
"""The command line of the 4D video studio; the one place that wires the engine, the studio
(app/) and the 3D viewer (viewer/) together.

    python launch.py                 # the studio on the embedded default model
    python launch.py --port 7861     # the studio's options (python launch.py app --help)
    python launch.py COMMAND --help  # every other command

Exit status: 0 success, 2 bad input (one line on stderr says what and what is allowed),
1 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def _add_app_arguments(p: argparse.ArgumentParser) -> None:
    from core.commands import add_compile_argument, add_precision_argument

    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="studio port (default 7860)")
    p.add_argument("--viewer-port", type=int, default=8080, help="3D viewer port (default 8080)")
    p.add_argument("--model", default="default", help="'default' (embedded) or a model folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_argument(p)
    add_compile_argument(p)
    p.add_argument("--runs", default=None, help="folder for run folders (default ./runs)")


def _run_app(args) -> int:
    try:
        from app.studio import launch_studio
    except ImportError as e:
        print(f"error: the studio is not available ({e})", file=sys.stderr)
        return 1
    try:
        from viewer.server import ViewerServer
    except ImportError:
        ViewerServer = None
    return launch_studio(args, viewer_factory=ViewerServer)


def build_parser():
    from core.commands import discover

    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="4D video studio: turn a fixed-view and a freeze-time video into a grid of "
        "views x times, and that grid into deformable 3D Gaussians.",
        epilog="With no COMMAND, or with only the studio's options (e.g. 'launch.py --port 7861'), it starts "
        "the studio; its options: 'launch.py app --help'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    app = sub.add_parser("app", help="start the studio (the default when no command is given)")
    _add_app_arguments(app)
    app.set_defaults(func=_run_app)
    for mod in discover():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def _runs_on_cpu(args) -> bool:
    """Whether the command's model or fit will run on the CPU (``--device cpu``, or ``auto`` without
    CUDA): there glibc is told to keep freed memory (``core.cpumem``); a GPU run is left as it is."""
    device = getattr(args, "device", None)
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["app", *argv]  # the studio is the default command: 'launch.py --port 7861' starts it
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the reason
        return 2 if e.code else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    from core.cpumem import keep_freed_memory
    from core.errors import InputError

    if _runs_on_cpu(args):  # before any worker thread starts (the studio's), so they share the main heap
        keep_freed_memory()

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
