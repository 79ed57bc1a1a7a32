"""Subcommands of the collector: `chot collector ...`."""


def register(sub):
    p = sub.add_parser("collector", help="the collector")
    p.set_defaults(group_parser=p)
