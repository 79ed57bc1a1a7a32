"""Subcommands of the provisioning: `chot provisioning ...`."""


def register(sub):
    p = sub.add_parser("provision", help="the provisioning")
    p.set_defaults(group_parser=p)
