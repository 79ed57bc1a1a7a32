"""The `chot` command line: one program, subcommands registered by each part.

Each part of the system keeps its own subcommands in a `cli` module with a
`register(subparsers)` function; this module only assembles them, sets up logging to
stderr (for the journal) and turns a `ChotError` into a message and an exit status.
"""

import argparse
import importlib
import logging
import sys

from chot import __version__
from chot.errors import ChotError

# Modules that add subcommands, in the order they appear in `chot --help`.
_PARTS = ["device.cli", "collector.cli", "provisioning.cli", "chot.demo"]

log = logging.getLogger(__name__)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="chot",
        description="Chot: QR checkpoint terminals and their central collector.",
        epilog="Run `chot COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"chot {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _PARTS:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbosity):
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        # A command group without its subcommand: show that group's help.
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return func(args) or 0
    except ChotError as exc:
        print(f"chot: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
