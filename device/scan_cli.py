"""`chot scan`: run image files or QR texts through the terminal's decoder, verification and policy."""


def register(sub):
    p = sub.add_parser("scan", help="check QR images or texts as a terminal would (JSON lines)")
    p.add_argument("files", nargs="*", help="image files (PNG, JPEG, WebP)")
    p.add_argument("--text", action="append", default=[], help="a QR text to check (repeatable)")
    p.add_argument("--at", help="evaluate at this instant (ISO 8601) instead of now")
    p.add_argument("--trust", action="append", default=[], help="issuer key/certificate/trust list (repeatable)")
    p.add_argument("--config", "-c", help="terminal config whose decoder and policy to use")
    p.set_defaults(func=_scan)


def _scan(args):
    raise NotImplementedError("chot scan is being built")
