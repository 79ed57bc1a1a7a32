"""`chot issue`: make issuer keys and signed declarations (PNG and SVG)."""


def register(sub):
    p = sub.add_parser("issue", help="make issuer keys and signed declaration QR codes")
    p.set_defaults(group_parser=p)
