"""``tympan`` command line: one parser, subcommands contributed by each subpackage.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``; a subpackage that is
not installed simply contributes nothing. Errors a user can fix (bad audio, missing folders,
bad bundles) print one line and exit 2; no stack trace.

Start-up is lazy: :func:`main` imports only the module of the command asked for (training
alone imports SciPy's signal package and augmentation: seconds), and lists the others from
:data:`COMMANDS` (name, module, one-line help) without importing them. ``tests/test_cli.py``
checks that table against what the modules register.
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

#: every subcommand: the module in :data:`COMMAND_MODULES` that registers it, and its help line
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("tympan.datasets.cli", "download, verify, inspect and featurise audio data"),
    "train": ("tympan.training.cli", "train on ESC-50 log-mels with cross-validation"),
    "evaluate": ("tympan.training.cli", "accuracy of a bundle on ESC-50-layout clips"),
    "serve": ("tympan.serving.cli", "serve the model over HTTP (FastAPI + uvicorn; see docs/api.md)"),
    "predict": ("tympan.batch.cli", "classify audio files and folders offline (tables with --out)"),
    "listen": ("tympan.live.cli", "classify live audio (streams, stdin PCM, a watched folder, a sound card)"),
    "events": ("tympan.live.cli", "list or export the events of a store (tympan listen --store)"),
    "diagnose": ("tympan.diagnostics.cli", "drift / OOD / calibration / robustness report"),
    "calibrate": ("tympan.diagnostics.cli", "fit a bundle's temperature, OOD threshold and drift reference"),
    "adapt": ("tympan.adaptation.cli", "adapt a bundle to field recordings (AdaBN; --labels: fine-tune)"),
    "dashboard": ("tympan.dashboard.cli", "open the Streamlit dashboard over a running tympan API"),
    "up": ("tympan.launch", "start the API and the dashboard on the shipped model"),
}

EXIT_OK, EXIT_ERROR = 0, 2


def _register(name: str, sub: argparse._SubParsersAction) -> bool:
    """Import command module ``name`` and let it add its subcommands; False if it is absent."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):  # the subpackage itself is absent
            return False
        raise
    module.register(sub)
    return True


def requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` asks for: its first word that is not an option (the top-level
    options, ``--help`` and ``--version``, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser. With ``argv``, only the module of the command it names is imported (the
    other commands are listed by name and help); without, every module registers (the full
    tree, for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="tympan",
        description="Environmental sound classification you can distrust: train, serve, diagnose.",
    )
    parser.add_argument("--version", action="version", version=f"tympan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if argv is None:
        for name in COMMAND_MODULES:
            _register(name, sub)
        return parser
    wanted = COMMANDS.get(requested_command(argv) or "", (None, ""))[0]
    registered = wanted is not None and _register(wanted, sub)
    for command, (module, help_line) in COMMANDS.items():
        if command not in sub.choices and not (registered and module == wanted):
            sub.add_parser(command, help=help_line, add_help=False)
    # the table's order, whichever module registered first
    sub._choices_actions.sort(key=lambda a: list(COMMANDS).index(a.dest) if a.dest in COMMANDS else len(COMMANDS))
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if args.command is not None:  # listed in COMMANDS, but its subpackage is not installed
            print(f"tympan: error: {args.command} is not available in this build", file=sys.stderr)
            return EXIT_ERROR
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
