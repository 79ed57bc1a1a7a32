"""`chot demo`: the whole system running locally with simulated terminals and mock GPIO."""


def register(sub):
    p = sub.add_parser("demo", help="run a local demo: simulated terminals with mock GPIO")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    p.set_defaults(func=_demo)


def _demo(args):
    raise NotImplementedError("the demo is being built")
