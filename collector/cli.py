"""Subcommands of the collector: `chot collector ...`.

Every command that touches the database or the broker takes `--config FILE` (default
/etc/chot/collector.toml). Query commands print JSON; `export` prints CSV.
"""

import sys

DEFAULT_CONFIG = "/etc/chot/collector.toml"


def register(sub):
    p = sub.add_parser("collector", help="the central collector: store events, publish lists, answer tracers")
    p.set_defaults(group_parser=p)
    csub = p.add_subparsers(dest="collector_command", metavar="ACTION")

    def cmd(name, func, help_, config=True):
        c = csub.add_parser(name, help=help_, description=help_)
        if config:
            c.add_argument(
                "--config", "-c", default=DEFAULT_CONFIG, help=f"collector config (default {DEFAULT_CONFIG})"
            )
        c.set_defaults(func=func)
        return c

    c = cmd("run", _run, "subscribe to the terminals' events and store them (and serve the HTTP API)")
    c.add_argument("--no-http", action="store_true", help="do not serve the HTTP API even if [http] enabled")

    c = cmd("check-config", _check_config, "validate a collector config and list every problem", config=False)
    c.add_argument("file", nargs="?", help="collector config (TOML)")
    c.add_argument("--defaults", action="store_true", help="print every key with its default")

    c = cmd("migrate", _migrate, "create or upgrade the database schema (run does it too)")

    c = cmd("keygen", _keygen, "make the collector's Ed25519 signing key pair", config=False)
    c.add_argument("--out", required=True, help="folder for collector.key (0600) and collector.pub")
    c.add_argument("--force", action="store_true", help="replace an existing key (every terminal must re-pin)")

    c = cmd("set-config", _set_config, "publish a signed config (TOML or JSON) to one terminal, retained")
    c.add_argument("device", help="device id")
    c.add_argument("file", help="config overrides (TOML, or .json)")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")

    c = cmd("publish-denylist", _publish_denylist, "publish the signed deny list to every terminal, retained")
    c.add_argument("file", help="ID numbers or subject keys, one a line (# comments)")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")

    c = cmd("publish-trust", _publish_trust, "publish the signed trusted issuers to every terminal, retained")
    c.add_argument("files", nargs="+", help="issuer public keys / certificates (PEM), JSON trust lists, folders")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")

    c = cmd("visits", _visits, "the visits of a subject (ID number or subject key) in a time range (JSON)")
    c.add_argument("subject", help="ID number, subject key (64 hex), or id:... / key:...")
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (included)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (excluded)")

    c = cmd("contacts", _contacts, "who was at the same checkpoint within +-W minutes of a subject (JSON)")
    c.add_argument("subject", help="ID number, subject key (64 hex), or id:... / key:...")
    c.add_argument("--days", type=float, default=14.0, help="look back this many days (default 14)")
    c.add_argument("--window", type=float, default=15.0, help="minutes either side of each visit (default 15)")
    c.add_argument("--at", help="the end of the look-back, ISO 8601 UTC (default now)")

    c = cmd("traffic", _traffic, "people in and out per checkpoint per hour (JSON)")
    c.add_argument("--checkpoint", help="one checkpoint (default all)")
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (default 24 h before --to)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (default now)")

    cmd("fleet", _fleet, "the terminals: online, outbox depth, last seen, open gaps (JSON)")

    c = cmd("export", _export, "events in a time range as CSV (for the national declaration system)")
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (included)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (excluded)")
    c.add_argument("--checkpoint", help="one checkpoint (default all)")
    c.add_argument("--out", "-o", help="write to this file (default stdout)")

    c = cmd("import", _import, "store the events of an export CSV (duplicates ignored)")
    c.add_argument("file", help="a CSV written by `chot collector export`")

    c = cmd("record-manual", _record_manual, "record a person checked on paper (source manual)")
    c.add_argument("--checkpoint", required=True, help="checkpoint id")
    c.add_argument("--direction", required=True, choices=("in", "out"))
    c.add_argument("--id-number", required=True, help="the person's ID number (stored only as its hash)")
    c.add_argument("--time", help="when, ISO 8601 UTC (default now)")
    c.add_argument("--name", help="the person's name as written on the paper form")
    c.add_argument("--refused", action="store_true", help="the person was turned away (decision FAIL)")


def _cfg(args):
    from collector.config import load_collector_config

    return load_collector_config(args.config)


def _storage(cfg):
    from collector.storage import Storage

    return Storage(cfg.collector.database, synchronous=cfg.collector.sqlite_synchronous)


def _print_json(obj):
    from collector.queries import dumps

    sys.stdout.write(dumps(obj) + "\n")


def _run(args):
    from collector.subscriber import run

    return run(_cfg(args), http=not args.no_http)


def _check_config(args):
    from collector.config import defaults_toml, load_collector_config

    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    if not args.file:
        print("chot collector check-config: give a FILE, or --defaults", file=sys.stderr)
        return 2
    cfg = load_collector_config(args.file)
    print(f"{args.file}: OK (collector {cfg.collector.id}, broker {cfg.mqtt.host}:{cfg.mqtt.port})")
    return 0


def _migrate(args):
    with _storage(_cfg(args)) as st:
        print(f"database schema at version {st.schema_version()}")
    return 0


def _keygen(args):
    from collector.signing import keygen

    priv, pub = keygen(args.out, force=args.force)
    print(f"private key: {priv} (0600; set collector.signing_key to it)")
    print(f"public key:  {pub} (pin it in every terminal: mqtt.collector_public_key)")
    return 0


def _publish(args, what, fn):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        out = fn(st, cfg, publish=not args.dry_run)
    if args.dry_run:
        sys.stdout.write(out[0].decode("utf-8") + "\n")
    else:
        print(f"{what} version {out[1]} published", file=sys.stderr)
    return 0


def _set_config(args):
    from collector.signing import set_config

    return _publish(
        args,
        f"config for {args.device}",
        lambda st, cfg, publish: set_config(st, cfg, args.device, args.file, publish=publish),
    )


def _publish_denylist(args):
    from collector.signing import publish_denylist

    return _publish(args, "deny list", lambda st, cfg, publish: publish_denylist(st, cfg, args.file, publish=publish))


def _publish_trust(args):
    from collector.signing import publish_trust

    return _publish(args, "trust list", lambda st, cfg, publish: publish_trust(st, cfg, args.files, publish=publish))


def _query(args, fn):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        _print_json(fn(st, cfg))
    return 0


def _visits(args):
    from collector.queries import visits

    return _query(args, lambda st, cfg: visits(st, args.subject, args.start, args.end))


def _contacts(args):
    from collector.queries import contacts

    return _query(args, lambda st, cfg: contacts(st, args.subject, args.days, args.window, args.at))


def _traffic(args):
    from collector.queries import traffic

    return _query(args, lambda st, cfg: traffic(st, args.checkpoint, args.start, args.end))


def _fleet(args):
    from collector.queries import fleet

    return _query(args, lambda st, cfg: fleet(st))


def _record_manual(args):
    from collector.queries import record_manual

    return _query(
        args,
        lambda st, cfg: record_manual(
            st,
            cfg.collector.id,
            args.checkpoint,
            args.direction,
            id_number=args.id_number,
            time=args.time,
            name=args.name,
            decision="FAIL" if args.refused else "PASS",
        ),
    )


def _export(args):
    from collector.queries import export_csv

    cfg = _cfg(args)
    with _storage(cfg) as st:
        if args.out:
            with open(args.out, "w", encoding="utf-8", newline="") as f:
                n = export_csv(st, f, args.start, args.end, args.checkpoint)
            print(f"{n} events written to {args.out}", file=sys.stderr)
        else:
            export_csv(st, sys.stdout, args.start, args.end, args.checkpoint)
    return 0


def _import(args):
    from chot.errors import CollectorError
    from collector.queries import import_csv

    cfg = _cfg(args)
    try:
        f = open(args.file, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise CollectorError(f"cannot read {args.file}: {exc.strerror}") from None
    with f, _storage(cfg) as st:
        n, new = import_csv(st, f)
    print(f"{n} events read, {new} new", file=sys.stderr)
    return 0
