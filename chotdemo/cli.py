"""`chot demo`: the whole system running locally, ending by itself; `chot demo-terminal`: one terminal on the crowd.

It starts a Mosquitto on a free loopback port with a generated config, the collector on
SQLite (with its HTTP API on a free port), and two simulated terminals — the entry and the
exit of one checkpoint — each fed by the synthetic crowd (people walking up with
declaration QRs rendered onto noisy camera-like frames, some forged, expired, symptomatic,
garbled or unsigned) and driving gpiozero's mock pins. It prints what each terminal decides,
the pin changes, and what the collector stores; at the end it checks that every event of
both terminals reached the collector exactly once. Everything lives in a temporary folder.

`chot demo-terminal --config FILE --issuer-key KEY` runs one terminal daemon as `chot terminal
run` does (systemd notifications, SIGTERM), with `scanner.source = "synthetic"` plugged in: the
crowd signs with KEY (the fault suite and the tests run their terminals this way). The terminal
itself knows no synthetic source and no test issuer (chotdemo/crowd.py).
"""

import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT = "phuc-tan-gate-1"
TERMINALS = (("gate-1-in", "in", 11), ("gate-1-out", "out", 23))  # id, direction, crowd seed
PIN_NAMES = {"pass_led": "green", "fail_led": "red", "buzzer": "buzzer", "relay": "relay"}


def register(sub):
    p = sub.add_parser(
        "demo",
        help="run the whole system locally: broker, collector, two simulated terminals with mock GPIO",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds to run (default 30; 0: until Ctrl-C, to look around the console)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of each simulated camera")
    p.add_argument("--no-pins", action="store_true", help="do not print pin changes")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, configs)")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "demo-terminal",
        help="run one terminal daemon on the synthetic crowd (scanner.source = 'synthetic')",
        description="Run the terminal daemon as `chot terminal run` does, with the demo's synthetic crowd as "
        "its camera (scanner.source = 'synthetic', scanner.synthetic_seed): people holding declarations "
        "signed by --issuer-key, some forged, expired or garbled.",
    )
    p.add_argument("--config", "-c", required=True, help="terminal config (TOML) with scanner.source = 'synthetic'")
    p.add_argument("--issuer-key", required=True,
                   help="private key (PEM) the crowd signs its declarations with; trust its public key in the config")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.set_defaults(func=_demo_terminal)


def _demo_terminal(args):
    from chotdemo.crowd import install
    from device.daemon import run_from_config

    install(args.issuer_key)
    return run_from_config(args.config, max_frames=args.max_frames)


class Printer:
    """Serialises output lines from the terminals' threads."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, who, text):
        with self.lock:
            print(f"{time.monotonic() - self.t0:7.2f}s [{who:<10}] {text}", file=self.out, flush=True)


def _make_collector_keys(key_dir):
    """The collector's sealing key pair, index secret and data key (as `chot provision init-fleet` makes them)."""
    from chot import personal

    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    personal.generate_seal_keys(key_dir)
    personal.new_secret_file(key_dir / "index.key")
    personal.new_secret_file(key_dir / "data.key")
    return key_dir


def _watch_pins(term_id, feedback, say, stop):
    """Print every pin change of the terminal's signal devices (polled from the mock pins)."""
    seen = {}
    while not stop.wait(0.02):
        changes = []
        for attr, label in PIN_NAMES.items():
            dev = getattr(feedback, attr, None)
            if dev is None:
                continue
            states = dev.pin.states
            start = seen.get(attr, 1)
            for st in states[start:]:
                changes.append((st.timestamp, f"{label}({dev.pin.info.name})={'on' if st.state else 'off'}"))
            seen[attr] = len(states)
        if changes:
            say(term_id, "pins  " + "  ".join(c for _, c in sorted(changes)))


def _terminal_cfg(tmp, term_id, direction, seed, port, issuer_pub, collector_pub, seal_pub, login):
    from chot.config import validate
    from device.config import SCHEMA

    return validate(
        {
            "device": {"id": term_id, "checkpoint": CHECKPOINT, "direction": direction},
            "scanner": {
                "source": "synthetic", "synthetic_seed": seed, "cooldown_s": 5.0,
            },
            "pins": {"factory": "mock", "relay": "GPIO23", "button": "GPIO24"},
            "feedback": {"pass_led_s": 0.5, "fail_led_s": 0.8, "relay_s": 0.5},
            "policy": {"trusted_issuers": [str(issuer_pub)]},
            "outbox": {"path": str(tmp / f"{term_id}-outbox.db"), "synchronous": "NORMAL"},
            "privacy": {"seal_public_key": str(seal_pub)},
            "mqtt": {
                "enabled": True, "host": "127.0.0.1", "port": port, "ack_timeout_s": 5.0,
                "status_interval_s": 5.0, "collector_public_key": str(collector_pub),
                "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                "username": login[0], "password_file": str(login[1]),
            },
        },
        SCHEMA,
        source=f"<demo {term_id}>",
        world=True,  # as the daemon at start-up: every file it names is there
    )


def _demo(args):
    from chotdemo.crowd import crowd_source
    from collector.config import config_from_dict
    from collector.subscriber import Collector
    from device.credentials import keys
    from device.daemon import Terminal
    from device.scanner.frames import Paced
    from provisioning.localbroker import LocalBroker

    say = Printer()
    tmp = Path(tempfile.mkdtemp(prefix="chot-demo-"))
    say("demo", f"working folder {tmp} (removed at the end unless --keep)")
    issuer_key = keys.generate("ed25519")
    _issuer_priv, issuer_pub = keys.save_keypair(issuer_key, tmp / "issuer")
    collector_key = keys.generate("ed25519")
    collector_priv, collector_pub = keys.save_keypair(collector_key, tmp / "collector", stem="collector")
    key_dir = _make_collector_keys(tmp / "collector-keys")

    # as a fleet's broker: every client logs in, and the ACL lets each write only its own topics
    broker = LocalBroker(tmp / "mosquitto", secure=True, persistence=True)
    logins = {term_id: broker.add_terminal(term_id) for term_id, _d, _s in TERMINALS}
    collector_login = broker.collector_credentials()
    broker.start()
    say("broker", f"mosquitto listening on 127.0.0.1:{broker.port} with logins and ACLs (config {broker.conf_path})")
    terms, threads, stop = [], [], threading.Event()
    passed = {}  # terminal id -> the Verification of the first person who passed there
    collector = api = None
    try:
        ccfg = config_from_dict({
            "collector": {"id": "demo", "database": f"sqlite:///{tmp / 'collector.db'}",
                          "batch_max_wait_ms": 100, "signing_key": str(collector_priv), "key_dir": str(key_dir)},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": collector_login[0],
                     "password_file": str(collector_login[1])},
            "http": {"enabled": True, "port": 0},
        }, world=True)
        collector = Collector(ccfg).start()
        collector.wait_subscribed(10)
        # each terminal is bound to its checkpoint and direction, as `chot collector devices import` does
        collector.storage.replace_bindings({t: (CHECKPOINT, d) for t, d, _s in TERMINALS}, "demo")
        collector.bindings.refresh(force=True)
        broker.save()  # the collector's subscription is on disk before any terminal publishes
        import secrets

        from collector.web import WebServer as ApiServer
        from collector.web.accounts import Accounts

        demo_password = secrets.token_urlsafe(12)
        Accounts(collector.storage).add_user("demo", demo_password, "admin")
        api = ApiServer(ccfg, collector.storage, collector=collector).start()
        say("collector", f"storing into {tmp / 'collector.db'}")
        say("console", f"{api.url}/  user: demo  password: {demo_password} (made for this run only)")

        for term_id, direction, seed in TERMINALS:
            cfg = _terminal_cfg(tmp, term_id, direction, seed, broker.port, issuer_pub, collector_pub,
                                key_dir / "seal.pub", logins[term_id])

            def report(event, decision, v, term_id=term_id):
                if event and decision.passed and v is not None and (v.person_id or "").startswith("id:"):
                    passed.setdefault(term_id, v)  # the demo knows who passed (in memory only)
                seq = f"seq {event['seq']:>4}" if event else "NOT RECORDED"
                fmt = v.format if v is not None else "manual"
                kind = (v.kind or "") if v is not None else ""
                sealed = "sealed" if event and event.get("sealed") else ""
                say(term_id, f"{seq}  {decision.decision:<4} {decision.reason:<18} {fmt:<7} {kind:<12} {sealed}")

            # the crowd as the camera, at a camera's pace; the crowd signs with the issuer the terminals trust
            term = Terminal.from_config(cfg, source=Paced(crowd_source(cfg.scanner, issuer_key), args.fps),
                                        on_decision=report)
            terms.append(term)
            say(term_id, f"terminal at {CHECKPOINT} ({direction}), outbox {cfg.outbox.path}")
            if not args.no_pins:
                t = threading.Thread(target=_watch_pins, args=(term_id, term.feedback, say, stop), daemon=True)
                t.start()
                threads.append(t)
        for term in terms:
            t = threading.Thread(target=term.run, name=f"terminal-{term.cfg.device.id}", daemon=True)
            t.start()
            threads.append(t)

        deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        if args.duration <= 0:
            say("demo", f"running until Ctrl-C; the console: {api.url}/")
        next_report = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                time.sleep(0.2)
                if time.monotonic() >= next_report:
                    next_report += 5
                    st = collector.stats()
                    say("collector", f"stored {st.get('stored', 0)} events, duplicates {st.get('duplicates', 0)}, "
                                     f"rejected {sum(st.get('rejected', {}).values()) if st.get('rejected') else 0}")
        except KeyboardInterrupt:
            say("demo", "Ctrl-C: stopping the terminals and checking what was delivered")
        for term in terms:
            term.stop()
        for t in threads:
            if t.name.startswith("terminal-"):
                t.join(10)
        return _drain_and_check(terms, collector, say, passed.get(TERMINALS[0][0]))
    finally:
        stop.set()
        for term in terms:
            term.close()
        if api is not None:
            api.stop()
        if collector is not None:
            collector.stop()
        broker.stop()
        if args.keep:
            say("demo", f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _tracing_example(collector, say, first):
    """The tracer's core question, asked of the first person who passed the entry (`first`, a Verification)."""
    from collector.queries import contacts

    # the demo knows who passed (in memory, as a tracer would know a case's ID number)
    if first is None:
        return
    book = getattr(collector.storage, "case_book", None)  # with the console: reads need an open case
    if book is not None and book.get("demo-case-1") is None:
        book.open("demo-case-1", first.person_id, "demo: the first person who passed", "demo")
    answer = contacts(collector.storage, first.person_id, case="demo-case-1", actor="demo", days=14, window_min=15)
    n_visits = sum(len(answer["visits"].get(k, [])) for k in ("verified", "unverified"))
    people = answer["contacts"]
    n_contacts = sum(len(people.get(k, [])) for k in ("verified", "unverified")) if isinstance(people, dict) \
        else len(people)
    say("tracing", f"case demo-case-1: contacts of the first person who passed:"
                   f" {n_visits} visit(s), {n_contacts} other people within ±15 min; the read is in the audit log")


def _drain_and_check(terms, collector, say, first_passed=None):
    """Wait until the collector acked every event, then compare both sides; 0 when they agree."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(t.outbox.stats()["depth"] for t in terms):
        time.sleep(0.2)
    ok = True
    for term in terms:
        dev = term.cfg.device.id
        st = term.outbox.stats()
        stored = collector.storage.contiguous(dev)
        say(dev, f"{term.counts['PASS']} pass, {term.counts['FAIL']} fail; last seq {st['last_seq']}, "
                 f"undelivered {st['depth']}; collector holds 1..{stored}")
        ok &= st["depth"] == 0 and stored == st["last_seq"]
    total = collector.storage.event_count()
    say("collector", f"{total} events stored in all; stats {collector.stats()}")
    _tracing_example(collector, say, first_passed)
    say("demo", "every event reached the collector exactly once" if ok else "NOT all events were delivered")
    return 0 if ok else 1
