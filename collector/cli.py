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
    c.add_argument("--offline", action="store_true",
                   help="leave out this machine's files and folders (keys, TLS files, database folder)")

    c = cmd("migrate", _migrate, "create or upgrade the database schema (run does it too)")

    c = cmd("keygen", _keygen, "make the collector's Ed25519 signing key pair and/or its personal-data keys",
            config=False)
    c.add_argument("--out", help="folder for the signing key collector.key (0600) and collector.pub")
    c.add_argument("--seal", action="store_true", help="a new sealing key pair in --key-dir (seal-<kid>.key, seal.pub;"
                   " old private keys are kept)")
    c.add_argument("--index", action="store_true", help="a new index secret (index.key) in --key-dir")
    c.add_argument("--data", action="store_true", help="a new data key (data.key) in --key-dir")
    c.add_argument("--key-dir", default="/etc/chot/collector-keys",
                   help="the collector's key folder (collector.key_dir; default /etc/chot/collector-keys)")
    c.add_argument("--force", action="store_true", help="replace existing keys (see docs/security.md first)")

    c = cmd("set-config", _set_config, "publish a signed config (TOML or JSON) to one terminal, retained")
    c.add_argument("device", help="device id")
    c.add_argument("file", help="config overrides (TOML, or .json)")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")
    c.add_argument("--ttl-h", type=float, help="hours until it expires (default collector.config_ttl_h)")
    c.add_argument("--now", action="store_true", help="publish it from here even when a collector is running "
                   "(by default the running collector publishes it through its own connection)")

    c = cmd("publish-denylist", _publish_denylist, "publish the signed deny list to every terminal, retained")
    c.add_argument("file", help="one a line (# comments): an ID number, nd:NAME|YYYY-MM-DD, or revoked:<credential id>")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")
    c.add_argument("--ttl-h", type=float, help="hours until it expires (default collector.denylist_ttl_h); "
                   "the running collector re-signs it before (collector.refresh_lists_h)")
    c.add_argument("--now", action="store_true", help="publish it from here even when a collector is running "
                   "(by default the running collector publishes it through its own connection)")
    c.add_argument("--argon2-t", type=int, help="Argon2id passes (default chot.personal.ARGON2_DEFAULT)")
    c.add_argument("--argon2-m-kib", type=int, help="Argon2id memory, KiB")
    c.add_argument("--argon2-p", type=int, help="Argon2id lanes")

    c = cmd("publish-trust", _publish_trust, "publish the signed trusted issuers to every terminal, retained")
    c.add_argument("files", nargs="+", help="issuer public keys / certificates (PEM), JSON trust lists, folders")
    c.add_argument("--dcc-revocations", metavar="FILE", help="a DCC revocation list to send with them: EU gateway "
                   "revocation batches (JSON), or lines 'UCI <ci>', 'COUNTRYCODEUCI <CC> <ci>', 'SIGNATURE <HC1:...>' "
                   "(hashed here: the list carries hashes only)")
    c.add_argument("--dcc-valuesets", metavar="DIR",
                   help="also send the EU DCC value sets in DIR (eu-dcc-valuesets files): terminals check DCC codes "
                        "against them in place of their installed ones, until a trust list without them")
    c.add_argument("--dry-run", action="store_true", help="print the signed message instead of publishing it")
    c.add_argument("--ttl-h", type=float, help="hours until it expires (default collector.trust_ttl_h); "
                   "the running collector re-signs it before (collector.refresh_lists_h)")
    c.add_argument("--now", action="store_true", help="publish it from here even when a collector is running "
                   "(by default the running collector publishes it through its own connection)")

    c = cmd("signed", _signed, "the signed messages the running collector keeps fresh (JSON), or forget one")
    c.add_argument("--forget", metavar="TOPIC", help="stop re-signing the message of TOPIC (e.g. the config of a "
                   "terminal taken out of service); what the broker keeps expires at its time")

    person_help = "an ID number, nd:NAME|YYYY-MM-DD for a certificate without one, or pcq:QID for a PC-Covid code"
    case_help = "the case this look-up is for (required; written to the audit log with your user name)"
    c = cmd("visits", _visits, "the visits of a person in a time range, verified and unverified apart (JSON)")
    c.add_argument("person", help=person_help)
    c.add_argument("--case", required=True, help=case_help)
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (included)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (excluded)")

    c = cmd("contacts", _contacts, "who was at the same checkpoint within +-W minutes of a person (JSON)")
    c.add_argument("person", help=person_help)
    c.add_argument("--case", required=True, help=case_help)
    c.add_argument("--days", type=float, default=14.0, help="look back this many days (default 14)")
    c.add_argument("--window", type=float, default=15.0, help="minutes either side of each visit (default 15)")
    c.add_argument("--at", help="the end of the look-back, ISO 8601 UTC (default now)")

    c = cmd("traffic", _traffic, "people in and out per checkpoint per hour (JSON)")
    c.add_argument("--checkpoint", help="one checkpoint (default all)")
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (default 24 h before --to)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (default now)")

    cmd("fleet", _fleet, "the terminals: online, outbox depth, last seen, open gaps (JSON)")

    c = cmd("export", _export, "events in a time range as CSV, clear columns only")
    c.add_argument("--case", required=True, help=case_help)
    c.add_argument("--from", dest="start", help="start, ISO 8601 UTC (included)")
    c.add_argument("--to", dest="end", help="end, ISO 8601 UTC (excluded)")
    c.add_argument("--checkpoint", help="one checkpoint (default all)")
    c.add_argument("--out", "-o", help="write to this file (default stdout)")

    c = cmd("import", _import, "store the events of an export CSV (duplicates ignored)")
    c.add_argument("file", help="a CSV written by `chot collector export`")

    c = cmd("record-manual", _record_manual, "record a paper declaration entered by staff (source paper, unverified)")
    c.add_argument("--checkpoint", required=True, help="checkpoint id")
    c.add_argument("--direction", required=True, choices=("in", "out"))
    c.add_argument("--id-number", help="the person's ID number (stored encrypted, indexed by its keyed hash)")
    c.add_argument("--time", help="when, ISO 8601 UTC (default now)")
    c.add_argument("--name", help="the person's name as written on the paper form (stored encrypted)")
    c.add_argument("--phone", help="the person's phone number (stored encrypted)")
    c.add_argument("--dob", help="birth date YYYY-MM-DD (with --name, when there is no ID number)")
    c.add_argument("--refused", action="store_true", help="the person was turned away (decision FAIL)")

    c = cmd("staff-card", _staff_card, "make a staff card: a signed QR (PNG) with which a staff member records "
            "paper declarations at their checkpoints' terminals, offline (docs/terminal.md)")
    c.add_argument("name", help="the staff member's name (on the card, signed; never printed here or logged)")
    c.add_argument("--checkpoint", action="append", required=True, metavar="CP",
                   help="a checkpoint where the card opens a paper window (repeat for several)")
    c.add_argument("--days", type=float, default=30.0, help="days until it expires (default 30, at most 366)")
    c.add_argument("--out", "-o", required=True, help="the PNG to write (the QR code)")
    c.add_argument("--key", help="the collector's signing key (default collector.signing_key of --config)")
    c.add_argument("--scale", type=int, default=8, help="pixels per QR module (default 8)")

    c = cmd("purge", _purge, "delete events older than collector.retention_days now (run does it periodically)")
    c.add_argument("--days", type=float, help="older than this many days (default collector.retention_days)")

    c = cmd("rekey", _rekey, "re-index and re-encrypt every stored person under new index and data keys"
            " (collector stopped)")
    c.add_argument("--new-key-dir", required=True,
                   help="a folder with the new index.key and data.key (chot collector keygen --index --data --key-dir)")

    d = csub.add_parser("devices", help="the devices' bindings: the checkpoint and direction each terminal may record",
                        description="Each terminal may record events only at the checkpoint and in the direction "
                        "it was enrolled for. `import` loads the fleet's registry (chot provision registry); `list` "
                        "shows the bindings.")
    d.set_defaults(group_parser=d)
    dsub = d.add_subparsers(dest="devices_command", metavar="ACTION")
    for name, func, help_ in (("import", _devices_import, "replace the bindings with a registry file's (JSON)"),
                              ("list", _devices_list, "the bindings (JSON)")):
        c = dsub.add_parser(name, help=help_, description=help_)
        c.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"collector config (default {DEFAULT_CONFIG})")
        c.set_defaults(func=func)
        if name == "import":
            c.add_argument("file", help="the fleet's registry.json (chot provision registry)")

    f = csub.add_parser("forward", help="forwarding to the national declaration system: status, run, retry",
                        description="The collector forwards stored events to the national system ([forward] in the "
                        "config; `chot collector run` does it in a thread when forward.enabled). `status` shows the "
                        "backlog, the dead letter and the last error; `retry` queues parked events again; `run` "
                        "forwards without ingesting (one sender at a time per database).")
    f.set_defaults(group_parser=f)
    fsub = f.add_subparsers(dest="forward_command", metavar="ACTION")
    for name, func, help_ in (("status", _forward_status, "backlog, dead letter, counters, last success, error (JSON)"),
                              ("run", _forward_run, "forward until SIGTERM (without ingesting)"),
                              ("retry", _forward_retry, "queue parked (dead-letter) events again"),
                              ("uninstall", _forward_uninstall, "stop queueing events for forwarding and drop the "
                               "forwarder's tables (the backlog is not sent)")):
        c = fsub.add_parser(name, help=help_, description=help_)
        c.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"collector config (default {DEFAULT_CONFIG})")
        c.set_defaults(func=func)
        if name == "status":
            c.add_argument("--limit", type=int, default=100, help="dead-letter rows shown at most (default 100)")
        if name == "uninstall":
            c.add_argument("--yes", action="store_true", required=True, help="yes, drop the backlog unsent")
        if name == "retry":
            c.add_argument("keys", nargs="*", metavar="DEVICE:SEQ", help="the parked events to retry (default all)")

    # the console's users and API tokens (collector/web/accounts.py)
    roles = ("admin", "tracer", "ward_officer", "checkpoint_staff", "viewer")
    u = csub.add_parser("user", help="the console's users: add, list, disable, enable, passwd, role",
                        description="the console's users (stored in the collector database)")
    usub = u.add_subparsers(dest="user_command", metavar="ACTION")
    u.set_defaults(group_parser=u)

    def ucmd(sub, name, func, help_):
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"collector config (default {DEFAULT_CONFIG})")
        c.set_defaults(func=func)
        return c

    scope_help = ("a checkpoint id, or a prefix ending in * (ward7-*), that a ward officer or checkpoint staff "
                  "may see (repeat it)")
    pw_help = "read the password from this file's first line ('-': standard input) instead of asking for it"
    c = ucmd(usub, "add", _user_add, "add a user (asks for the password twice)")
    c.add_argument("name", help="user name (1-64 letters, digits, _ . @ -)")
    c.add_argument("--role", required=True, choices=roles, help="what the user may do (docs/console.md)")
    c.add_argument("--checkpoint", action="append", default=[], help=scope_help)
    c.add_argument("--password-file", help=pw_help)
    ucmd(usub, "list", _user_list, "list the users (JSON)")
    c = ucmd(usub, "disable", _user_disable, "disable a user and end their sessions")
    c.add_argument("name")
    c = ucmd(usub, "enable", _user_enable, "enable a disabled user again")
    c.add_argument("name")
    c = ucmd(usub, "passwd", _user_passwd, "set a user's password (ends their sessions)")
    c.add_argument("name")
    c.add_argument("--password-file", help=pw_help)
    c = ucmd(usub, "role", _user_role, "change a user's role (and checkpoints)")
    c.add_argument("name")
    c.add_argument("role", choices=roles)
    c.add_argument("--checkpoint", action="append", default=None, help=scope_help + "; replaces the list")

    t = csub.add_parser("token", help="API tokens for machine clients: add, list, revoke",
                        description="API tokens for machine clients (Authorization: Bearer TOKEN)")
    tsub = t.add_subparsers(dest="token_command", metavar="ACTION")
    t.set_defaults(group_parser=t)
    c = ucmd(tsub, "add", _token_add, "make an API token; prints it once (only its hash is stored)")
    c.add_argument("name", help="token name (shown in the audit log as token:NAME)")
    c.add_argument("--scope", action="append", required=True,
                   choices=("fleet:read", "traffic:read", "personal:read", "case:write", "paper:write", "audit:read",
                            "users:admin"), help="what it may do (repeat it)")
    c.add_argument("--checkpoint", action="append", default=None, help="only these checkpoints (ids or prefix*)")
    c.add_argument("--days", type=float, help="it expires after this many days (default never)")
    ucmd(tsub, "list", _token_list, "list the API tokens (JSON; never their secrets)")
    c = ucmd(tsub, "revoke", _token_revoke, "revoke an API token")
    c.add_argument("name")

    c = cmd("audit", _audit, "the audit log of personal-data reads, newest first (JSON)")
    c.add_argument("--case", help="only this case")
    c.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")

    # cases (collector/cases.py): personal reads (visits, contacts, export) need an open one
    k = csub.add_parser("case", help="cases: open, close, list (personal reads need an open case)",
                        description="cases: every personal read (visits, contacts, export) names an open case")
    ksub = k.add_subparsers(dest="case_command", metavar="ACTION")
    k.set_defaults(group_parser=k)
    c = ucmd(ksub, "open", _case_open, "open a case for an index person (written to the audit log)")
    c.add_argument("number", help="the case number, e.g. HCM-2021-0815-07")
    c.add_argument("--person", required=True, help="the index person: " + person_help)
    c.add_argument("--reason", required=True, help="why the case is opened")
    c = ucmd(ksub, "close", _case_close, "close a case: no more personal reads in it")
    c.add_argument("number")
    c = ucmd(ksub, "list", _case_list, "list the cases, newest first (JSON)")
    c.add_argument("--status", choices=("open", "closed", "all"), default="all")


def _cfg(args, world=False):
    from collector.config import load_collector_config

    return load_collector_config(args.config, world=world)


def _storage(cfg, keys=False):
    """The database; with `keys` the collector's keys too (personal queries, paper declarations)."""
    from collector.storage import Storage

    k = None
    if keys:
        from collector.keys import CollectorKeys

        k = CollectorKeys.from_dir(cfg.collector.key_dir)
    return Storage(cfg.collector.database, synchronous=cfg.collector.sqlite_synchronous, keys=k,
                   retention_days=cfg.collector.retention_days, future_skew_s=cfg.collector.future_skew_s)


def _actor():
    """Who runs the command, for the audit log: the OS user."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        import os

        return f"uid:{os.getuid()}"


def _print_json(obj):
    from collector.queries import dumps

    sys.stdout.write(dumps(obj) + "\n")


def _run(args):
    from collector.subscriber import run

    return run(_cfg(args, world=True), http=not args.no_http)


def _check_config(args):
    from collector.config import defaults_toml, load_collector_config

    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    if not args.file:
        print("chot collector check-config: give a FILE, or --defaults", file=sys.stderr)
        return 2
    cfg = load_collector_config(args.file, world=not args.offline)
    note = " (offline: files not checked)" if args.offline else ""
    print(f"{args.file}: OK{note} (collector {cfg.collector.id}, broker {cfg.mqtt.host}:{cfg.mqtt.port})")
    return 0


def _migrate(args):
    with _storage(_cfg(args)) as st:
        print(f"database schema at version {st.schema_version()}")
    return 0


def _keygen(args):
    from chot.errors import CollectorError
    from collector.keys import make_key_dir
    from collector.signing import keygen

    if not (args.out or args.seal or args.index or args.data):
        raise CollectorError("keygen: give --out DIR (the signing key) and/or --seal/--index/--data (--key-dir DIR)")
    if args.seal or args.index or args.data:
        for path in make_key_dir(args.key_dir, seal=args.seal, index=args.index, data=args.data, force=args.force):
            print(f"key: {path}")
        print(f"set collector.key_dir = {args.key_dir!r}; copy seal.pub to every terminal (privacy.seal_public_key)")
    if args.out:
        priv, pub = keygen(args.out, force=args.force)
        print(f"private key: {priv} (0600; set collector.signing_key to it)")
        print(f"public key:  {pub} (pin it in every terminal: mqtt.collector_public_key)")
    return 0


def _publish(args, what, fn, topic):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        out = fn(st, cfg, publish=not args.dry_run)
        if not args.dry_run:
            from collector.refresh import SignedStore

            by = (SignedStore(st).get(topic) or {}).get("published_by") or "directly"
    if args.dry_run:
        sys.stdout.write(out[0].decode("utf-8") + "\n")
    else:
        print(f"{what} version {out[1]} published ({by})", file=sys.stderr)
    return 0


def _signed(args):
    import json

    from chot.errors import CollectorError
    from collector.refresh import SignedStore

    with _storage(_cfg(args)) as st:
        store = SignedStore(st)
        if args.forget:
            if not store.forget(args.forget):
                raise CollectorError(f"no signed message is kept for {args.forget!r}: see `chot collector signed`")
            print(f"{args.forget}: no longer re-signed", file=sys.stderr)
            return 0
        out = {"messages": list(store.summary().values()), "running": store.live_publishers()}
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


def _set_config(args):
    from chot import wire
    from collector.signing import set_config

    return _publish(
        args,
        f"config for {args.device}",
        lambda st, cfg, publish: set_config(st, cfg, args.device, args.file, publish=publish, ttl_h=args.ttl_h,
                                            now=args.now),
        wire.config_topic(args.device),
    )


def _publish_denylist(args):
    from chot import wire
    from collector.signing import publish_denylist

    params = None
    if args.argon2_t or args.argon2_m_kib or args.argon2_p:
        from chot.personal import ARGON2_DEFAULT

        params = dict(ARGON2_DEFAULT)
        for k, v in (("t", args.argon2_t), ("m_kib", args.argon2_m_kib), ("p", args.argon2_p)):
            if v is not None:
                params[k] = v
    return _publish(args, "deny list",
                    lambda st, cfg, publish: publish_denylist(st, cfg, args.file, publish=publish, params=params,
                                                              ttl_h=args.ttl_h, now=args.now),
                    wire.broadcast_topic("denylist"))


def _publish_trust(args):
    from chot import wire
    from collector.signing import publish_trust

    return _publish(args, "trust list", lambda st, cfg, publish: publish_trust(st, cfg, args.files, publish=publish,
                                                                               ttl_h=args.ttl_h, now=args.now,
                                                                               dcc_revocations=args.dcc_revocations,
                                                                               dcc_valuesets=args.dcc_valuesets),
                    wire.broadcast_topic("trust"))


def _query(args, fn, keys=False):
    cfg = _cfg(args)
    with _storage(cfg, keys=keys) as st:
        _print_json(fn(st, cfg))
    return 0


def _visits(args):
    from collector.queries import visits

    return _query(args, lambda st, cfg: visits(_cases(st), args.person, args.case, _actor(), args.start, args.end),
                  True)


def _contacts(args):
    from collector.queries import contacts

    return _query(
        args, lambda st, cfg: contacts(_cases(st), args.person, args.case, _actor(), args.days, args.window, args.at),
        True,
    )


def _purge(args):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        _print_json(st.purge(args.days if args.days is not None else cfg.collector.retention_days))
    return 0


def _forward_status(args):
    from collector import forward

    cfg = _cfg(args)
    with _storage(cfg) as st:
        out = {"enabled": cfg.forward.enabled, "endpoint": forward.endpoint_label(cfg.forward.url)
               if cfg.forward.url else None, **forward.state(st), "dead_letter": forward.dead_letters(st, args.limit)}
    _print_json(out)


def _forward_retry(args):
    from collector import forward

    with _storage(_cfg(args)) as st:
        _print_json({"queued_again": forward.retry(st, args.keys or None)})


def _forward_uninstall(args):
    from collector import forward

    with _storage(_cfg(args)) as st:
        _print_json({"dropped_backlog": forward.uninstall(st)})


def _forward_run(args):
    import signal
    import threading

    from collector import forward

    cfg = _cfg(args, world=True)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _storage(cfg, keys=True) as st:
            forward.run(cfg, st, stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def _rekey(args):
    import sys

    from collector.rekey import load_new_keys, rekey

    cfg = _cfg(args)
    index, cipher = load_new_keys(args.new_key_dir)
    with _storage(cfg, keys=True) as st:
        n = rekey(st, index, cipher,
                  progress=lambda done, todo: print(f"rekey: {done:,} of {todo:,} events", file=sys.stderr))
    print(f"rekey: {n} events rewritten. Now copy {args.new_key_dir}/index.key and data.key over the ones in "
          f"{cfg.collector.key_dir} (0600) and start the collector; keep the old ones offline until the backup "
          "made before this run is no longer needed")
    return 0


def _devices_import(args):
    from collector.registry import import_registry

    cfg = _cfg(args)
    with _storage(cfg) as st:
        res = import_registry(st, args.file)
        total = len(st.bindings())
    print(f"{total} devices bound: {len(res['added'])} added, {len(res['changed'])} changed, "
          f"{len(res['removed'])} removed, {res['unchanged']} unchanged (running collectors see it within 10 s)",
          file=sys.stderr)
    for what in ("added", "changed", "removed"):
        for dev in res[what]:
            print(f"  {what}: {dev}", file=sys.stderr)
    return 0


def _devices_list(args):
    return _query(args, lambda st, cfg: [{"device_id": d, "checkpoint": cp, "direction": dr}
                                         for d, (cp, dr) in sorted(st.bindings().items())])


def _audit(args):
    return _query(args, lambda st, cfg: st.audit_log(args.case, args.limit))


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
            phone=args.phone,
            dob=args.dob,
            decision="FAIL" if args.refused else "PASS",
            recorded_by=f"cli:{_actor()}",
        ),
        True,
    )


def _staff_card(args):
    import segno

    from chot.errors import CollectorError
    from chot.staffcard import StaffCardError, make_card
    from collector.signing import load_signing_key

    key = load_signing_key(args.key or _cfg(args).collector.signing_key)
    try:
        text, card = make_card(key, args.name, args.checkpoint, days=args.days)
    except StaffCardError as exc:
        raise CollectorError(str(exc)) from None
    qr = segno.make_qr(text, error="m")
    qr.save(args.out, scale=max(1, args.scale), border=4)
    from datetime import UTC, datetime

    expires = datetime.fromtimestamp(card.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"staff card {card.id_hex} written to {args.out} (QR version {qr.version}, {len(text)} characters)")
    print(f"checkpoints: {', '.join(card.checkpoints)}; expires {expires}")
    print(f"to revoke it: add the line `revoked:staff:{card.id_hex}` to the deny list input and publish it "
          "(chot collector publish-denylist)")
    return 0


def _export(args):
    from collector.queries import export_csv

    cfg = _cfg(args)
    with _storage(cfg) as st:
        _cases(st)
        if args.out:
            import os

            # 0600: an export holds where and when each terminal recorded whom (keyed, but still case data)
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                n = export_csv(st, f, args.case, _actor(), args.start, args.end, args.checkpoint)
            print(f"{n} events written to {args.out}", file=sys.stderr)
        else:
            export_csv(st, sys.stdout, args.case, _actor(), args.start, args.end, args.checkpoint)
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


# --- the console's users and tokens -----------------------------------------------------------


def _accounts(args):
    from collector.web.accounts import Accounts

    st = _storage(_cfg(args))
    return st, Accounts(st)


def _read_password(args, confirm=True):
    """The new password: from --password-file (first line; '-' stdin) or asked twice without echo."""
    from chot.errors import CollectorError

    if args.password_file:
        try:
            if args.password_file == "-":
                line = sys.stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    line = f.readline()
        except OSError as exc:
            raise CollectorError(f"cannot read {args.password_file}: {exc.strerror}") from None
        return line.rstrip("\r\n")
    import getpass

    if not sys.stdin.isatty():
        raise CollectorError("no terminal to ask the password on: give --password-file FILE (or - for stdin)")
    pw = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password again: ") != pw:
        raise CollectorError("the two passwords differ; nothing changed")
    return pw


def _user_add(args):
    from collector.web.accounts import check_password

    password = check_password(_read_password(args))
    st, acc = _accounts(args)
    with st:
        acc.add_user(args.name, password, args.role, args.checkpoint)
    scope = f" (checkpoints: {', '.join(args.checkpoint)})" if args.checkpoint else ""
    print(f"user {args.name} added as {args.role}{scope}")
    return 0


def _user_list(args):
    st, acc = _accounts(args)
    with st:
        _print_json(acc.users())
    return 0


def _user_disable(args):
    st, acc = _accounts(args)
    with st:
        acc.set_disabled(args.name, True)
    print(f"user {args.name} disabled; their sessions ended")
    return 0


def _user_enable(args):
    st, acc = _accounts(args)
    with st:
        acc.set_disabled(args.name, False)
    print(f"user {args.name} enabled")
    return 0


def _user_passwd(args):
    from collector.web.accounts import check_password

    password = check_password(_read_password(args))
    st, acc = _accounts(args)
    with st:
        acc.set_password(args.name, password)
    print(f"password of {args.name} changed; their sessions ended")
    return 0


def _user_role(args):
    st, acc = _accounts(args)
    with st:
        acc.set_role(args.name, args.role, args.checkpoint)
    print(f"user {args.name} is now {args.role}")
    return 0


def _token_add(args):
    st, acc = _accounts(args)
    with st:
        secret = acc.add_token(args.name, args.scope, _actor(), args.checkpoint, args.days)
    print(secret)
    print(f"token {args.name} made ({', '.join(args.scope)}); it is shown only now: keep it in a 0600 file and send "
          "it as 'Authorization: Bearer TOKEN'", file=sys.stderr)
    return 0


def _token_list(args):
    st, acc = _accounts(args)
    with st:
        _print_json(acc.tokens())
    return 0


def _token_revoke(args):
    st, acc = _accounts(args)
    with st:
        acc.revoke_token(args.name)
    print(f"token {args.name} revoked")
    return 0


def _cases(st):
    """Attach the case book to `st` (personal queries then need an open case); returns `st`."""
    from collector.cases import CaseBook

    CaseBook(st)
    return st


def _case_open(args):
    cfg = _cfg(args)
    with _storage(cfg, keys=True) as st:
        _print_json(_cases(st).case_book.open(args.number, args.person, args.reason, _actor()))
    return 0


def _case_close(args):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        _print_json(_cases(st).case_book.close(args.number, _actor()))
    return 0


def _case_list(args):
    cfg = _cfg(args)
    with _storage(cfg) as st:
        cases, _total = _cases(st).case_book.list(args.status, 0, 10**6)
        _print_json(cases)
    return 0
