"""The `chot` command line: one program, subcommands registered by each part, loaded on demand.

Each part of the system keeps its own subcommands in a `cli` module with a
`register(subparsers)` function; this module only names them (COMMANDS), imports the one
module the command line asks for (so `chot collector run` never imports the terminal, and
`import chot.cli` imports no part at all), sets up logging to stderr (for the journal) and turns
a `ChotError` into a message and an exit status. The shared core (chot/) imports no part.
"""

import argparse
import importlib
import logging
import sys

from chot import __version__
from chot.errors import ChotError

# command -> (the module whose register(subparsers) adds it, its line in `chot --help`), in that order.
COMMANDS = {
    "terminal": ("device.cli", "run and check a checkpoint terminal"),
    "scan": ("device.cli", "check QR images or texts as a terminal would (JSON lines)"),
    "issue": ("device.cli", "make issuer keys and signed declaration QR codes"),
    "collector": ("collector.cli", "the central collector: store events, publish lists, answer tracers"),
    "provision": ("provisioning.cli", "fleet CA, terminal credentials and bundles, broker config, revocation"),
    "demo": ("chotdemo.cli",
             "run the whole system locally: broker, collector, two simulated terminals with mock GPIO"),
    "demo-terminal": ("chotdemo.cli", "run one terminal daemon on the synthetic crowd (scanner.source = 'synthetic')"),
}

log = logging.getLogger(__name__)


def _command_of(argv):
    """The subcommand named in `argv` (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv=None):
    """The parser; with `argv`, only the module of the command it names is imported (the others are
    listed by name; a command not in COMMANDS loads every part), without it every part is loaded."""
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
    command = None if argv is None else _command_of(argv)
    if command in COMMANDS:
        wanted = {COMMANDS[command][0]}
    else:  # no command (help), or one not listed here: every part, so argparse knows all there is
        wanted = {mod for mod, _ in COMMANDS.values()} if command is not None or argv is None else set()
    loaded = set()
    for name, (module, help_) in COMMANDS.items():
        if module in wanted:
            if module not in loaded:
                importlib.import_module(module).register(sub)  # a CLI module of the part, named above
                loaded.add(module)
        else:
            sub.add_parser(name, help=help_)  # listed; its module is loaded when it is the command
    return parser


def setup_logging(verbosity):
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
