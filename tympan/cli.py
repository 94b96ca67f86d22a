"""``tympan`` command line: one parser, subcommands contributed by each subpackage.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``; a subpackage that is
not installed simply contributes nothing. Errors a user can fix (bad audio, missing folders,
bad bundles) print one line and exit 2; no stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tympan import __version__
from tympan.errors import TympanError

COMMAND_MODULES = [
    "tympan.datasets.cli",
    "tympan.training.cli",
    "tympan.serving.cli",
    "tympan.batch.cli",
    "tympan.live.cli",
    "tympan.diagnostics.cli",
    "tympan.adaptation.cli",
    "tympan.dashboard.cli",
    "tympan.launch",
]

EXIT_OK, EXIT_ERROR = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tympan",
        description="Environmental sound classification you can distrust: train, serve, diagnose.",
    )
    parser.add_argument("--version", action="version", version=f"tympan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # the subpackage itself is absent
                continue
            raise
        module.register(sub)
    return parser


def run(func, args: argparse.Namespace, prog: str = "tympan") -> int:
    """Call a command, mapping user-fixable errors to one line on stderr and exit code 2."""
    try:
        return int(func(args) or EXIT_OK)
    except (TympanError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR if args.command is None and argv else EXIT_OK
    return run(args.func, args)


def diagnose_main(argv: Sequence[str] | None = None) -> int:
    """The design card's ``diagnose`` command (same as ``tympan diagnose``)."""
    try:
        module = importlib.import_module("tympan.diagnostics.cli")
        entry = module.diagnose_main
    except (ModuleNotFoundError, AttributeError):
        print("diagnose: diagnostics are not available in this build", file=sys.stderr)
        return EXIT_ERROR
    return entry(argv)


if __name__ == "__main__":
    sys.exit(main())
