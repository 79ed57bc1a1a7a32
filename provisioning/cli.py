"""Subcommands of the provisioning: `chot provision ...`.

    chot provision init-fleet DIR --broker-host HOST   the fleet CA, broker and collector credentials, collector keys
    chot provision collector-keys [--fleet DIR] [--rotate]   the collector's sealing, index and data keys
    chot provision device ID --checkpoint CP --direction in|out [--fleet DIR] [--dcc-schema DIR]
                          [--dcc-valuesets DIR]   enrol a terminal
    chot provision collector NAME [--fleet DIR]         another collector instance's own certificate
    chot provision broker-config --fleet DIR --out DIR [--port 8883]   mosquitto.conf, access rules, TLS files
    chot provision revoke ID [--fleet DIR]              shut a terminal out (CRL and the broker's rules)
    chot provision bundle ID / list / crl               rebuild a bundle, list the fleet, re-sign the CRL
    chot provision registry [--out FILE]                the devices' checkpoints and directions, for the collector

The fleet directory defaults to $CHOT_FLEET, else ./fleet. Nothing secret is ever printed:
the commands print paths, never keys (a sealing *public* key is printed for its roll-out).
"""

import logging
import os
import sys

log = logging.getLogger(__name__)


def _fleet_default():
    return os.environ.get("CHOT_FLEET", "fleet")


def register(sub):
    p = sub.add_parser(
        "provision",
        help="fleet CA, terminal credentials and bundles, broker config, revocation",
        description="Make and keep the fleet's keys and certificates, enrol terminals, configure the broker.",
    )
    p.set_defaults(group_parser=p)
    ps = p.add_subparsers(dest="provision_command", metavar="ACTION")

    a = ps.add_parser("init-fleet", help="make a new fleet directory: CA, broker and collector credentials")
    a.add_argument("dir", help="the new fleet directory (keep it secret and backed up)")
    a.add_argument("--broker-host", required=True, help="the broker's host name as the terminals reach it")
    a.add_argument("--broker-port", type=int, default=8883, help="the broker's TLS port (default 8883)")
    a.add_argument("--broker-alt-name", action="append", default=[], help="another name or IP of the broker")
    a.add_argument("--collector-user", default="collector", help="the collector's MQTT user (its certificate CN)")
    a.add_argument("--name", default="Chot fleet", help="the fleet's name (in certificates)")
    a.set_defaults(func=_init_fleet)

    a = ps.add_parser(
        "collector-keys",
        help="make the collector's missing personal-data keys; --rotate: a new sealing key pair",
        description="Make what is missing in FLEET/collector-keys/: the sealing key pair (seal-<kid>.key, "
                    "seal.pub), the person index secret (index.key) and the data key (data.key). Existing keys "
                    "are never replaced. --rotate makes a new sealing key pair: the old private keys are kept "
                    "(they open the events sealed to them) and seal.pub becomes the new public key.",
    )
    a.add_argument("--fleet", default=_fleet_default(), help="fleet directory (default $CHOT_FLEET or ./fleet)")
    a.add_argument("--rotate", action="store_true",
                   help="a new sealing key pair (old private keys kept); prints how to roll it out")
    a.set_defaults(func=_collector_keys)

    a = ps.add_parser("device", help="enrol a terminal: key, certificate, terminal.toml and a bundle to carry")
    a.add_argument("id", help="device id (the MQTT user and topic segment), e.g. hk-phuc-tan-gate-1-in")
    a.add_argument("--checkpoint", required=True, help="checkpoint id, e.g. hk-phuc-tan-gate-1")
    a.add_argument("--direction", required=True, choices=("in", "out"), help="entry or exit")
    a.add_argument("--fleet", default=_fleet_default(), help="fleet directory (default $CHOT_FLEET or ./fleet)")
    a.add_argument("--pins", "--pin", action="append", default=[], metavar="KEY=PIN[,KEY=PIN]",
                   help="pins of [pins], e.g. pass_led=GPIO17,buzzer=GPIO22,rgb_led=GPIO17/GPIO27/GPIO22")
    a.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any other terminal.toml key, e.g. policy.max_age_h=12 or scanner.source=\"usb\"")
    a.add_argument("--trust", action="append", default=[], metavar="FILE",
                   help="issuer public key or certificate the terminal trusts (repeatable)")
    a.add_argument("--wheel", help="a chot wheel to put into the bundle (pip wheel --no-deps .)")
    a.add_argument("--dcc-schema", metavar="DIR",
                   help="the ehn-dcc-schema releases (one folder per version) the terminal validates EU DCCs "
                        "against; installed in /etc/chot/dcc-schema")
    a.add_argument("--dcc-valuesets", metavar="DIR",
                   help="the EU DCC value sets (eu-dcc-valuesets JSON files and a rapid test device list) the "
                        "terminal checks DCC codes against; installed in /etc/chot/dcc-valuesets")
    a.add_argument("--renew", action="store_true", help="issue a new key to an enrolled device (old one revoked)")
    a.set_defaults(func=_device)

    a = ps.add_parser(
        "collector", help="make another collector instance its own certificate (its own MQTT user and client id)",
        description="Make collectors/NAME/client.crt and client.key (0600) with the CN <collector_user>-NAME: "
                    "each collector instance sharing the load needs its own identity (the broker makes the CN "
                    "the client id, so two instances with one certificate would take each other's session "
                    "over). The broker configs written before are refreshed; restart the broker to apply.",
    )
    a.add_argument("name", help="the instance's name, e.g. its collector.id (b, second, hanoi-2)")
    a.add_argument("--fleet", default=_fleet_default(), help="fleet directory (default $CHOT_FLEET or ./fleet)")
    a.set_defaults(func=_collector)

    a = ps.add_parser("bundle", help="make an enrolled terminal's bundle again (e.g. with a new --wheel)")
    a.add_argument("id")
    a.add_argument("--fleet", default=_fleet_default())
    a.add_argument("--wheel")
    a.set_defaults(func=_bundle)

    a = ps.add_parser("broker-config", help="write mosquitto.conf, the access rules and the TLS files for the broker")
    a.add_argument("--fleet", default=_fleet_default())
    a.add_argument("--out", required=True, help="output directory")
    a.add_argument("--port", type=int, default=None, help="TLS port (default: the fleet's broker port)")
    a.add_argument("--bind", default=None, help="address to listen on (default: all)")
    a.add_argument("--conf-dir", default=None,
                   help="where the files will live on the broker host (paths in mosquitto.conf; default --out)")
    a.add_argument("--persistence-dir", default="/var/lib/mosquitto", help="mosquitto's persistence_location")
    a.add_argument("--log-dest", default="syslog", help="mosquitto log_dest (syslog, stderr, 'file PATH')")
    a.add_argument("--user", default="mosquitto",
                   help="the user mosquitto drops to (it must read the access rules and server key; default mosquitto)")
    a.add_argument("--dynsec-plugin", default=None, metavar="PATH",
                   help="the dynamic-security plugin's path on the broker host (default: this machine's, found "
                        "under /usr/lib; a Pi: /usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so)")
    a.set_defaults(func=_broker_config)

    a = ps.add_parser("revoke", help="shut a terminal out: its certificate into the CRL, its user denied by the broker")
    a.add_argument("id")
    a.add_argument("--fleet", default=_fleet_default())
    a.set_defaults(func=_revoke)

    a = ps.add_parser("crl", help="sign the CRL again (renews its expiry) and refresh the broker configs")
    a.add_argument("--fleet", default=_fleet_default())
    a.set_defaults(func=_crl)

    a = ps.add_parser(
        "registry",
        help="write the fleet's device registry (checkpoint and direction of each terminal) for the collector",
        description="Write what each enrolled terminal was enrolled for (device id, checkpoint, direction; "
                    "revoked ones apart) as JSON, for `chot collector devices import FILE`: the collector then "
                    "refuses an event claiming another checkpoint or direction. Run it again after enrolling, "
                    "moving (--renew) or revoking a terminal.",
    )
    a.add_argument("--fleet", default=_fleet_default())
    a.add_argument("--out", "-o", help="output file (default FLEET/registry.json)")
    a.set_defaults(func=_registry)

    a = ps.add_parser("list", help="list the enrolled and revoked terminals")
    a.add_argument("--fleet", default=_fleet_default())
    a.set_defaults(func=_list)


def _init_fleet(args):
    from provisioning.fleet import init_fleet

    fleet = init_fleet(
        args.dir, args.broker_host, broker_port=args.broker_port, collector_user=args.collector_user,
        name=args.name, extra_names=args.broker_alt_name,
    )
    print(f"fleet made in {fleet.dir}")
    print(f"  CA certificate:        {fleet.ca_crt}")
    print(f"  broker certificate:    {fleet.server_crt} (for {args.broker_host}, localhost, 127.0.0.1)")
    print(f"  collector signing key: {fleet.signing_key} (terminals pin {fleet.signing_pub})")
    print(f"  collector client cert: {fleet.collector_crt} (MQTT user {args.collector_user!r})")
    kid, _text = fleet.seal_public()
    print(f"  collector keys:        {fleet.collector_keys}/ (collector.key_dir): seal-{kid}.key, seal.pub, "
          "index.key, data.key")
    print("private keys are mode 0600: keep this directory secret and backed up")
    print(f"next: chot provision broker-config --fleet {fleet.dir} --out DIR")
    return 0


def _collector_keys(args):
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    made = fleet.make_collector_keys(rotate=args.rotate)
    for what, path in made:
        print(f"made {what}: {path}")
    if not made:
        print(f"nothing to make: {fleet.collector_keys} holds every key")
    kid, text = fleet.seal_public()
    print(f"current sealing key: {kid} ({fleet.seal_pub}); private keys kept: {', '.join(fleet.seal_kids())}")
    print(f"install {fleet.collector_keys} on the collector as collector.key_dir (folder 0700, keys 0600, "
          "owned by the collector's user)")
    if args.rotate:
        _, body = fleet.write_seal_rollout()
        revoked = set(fleet.revoked_ids())
        devices = [d for d in fleet.devices() if d not in revoked]
        print("roll the new public key out, in this order:")
        print(f"  1. copy {fleet.collector_keys}/seal-{kid}.key to the collector's key_dir and restart the collector "
              "(keep the old seal-*.key there: they open the older events)")
        print(f"  2. publish it to every terminal (signed config; body in {body}):")
        print(f'       {{"privacy": {{"seal_public_key": "{text.strip()}"}}}}')
        for dev in devices or ["DEVICE"]:
            print(f"       chot collector set-config {dev} {body}")
        print("     (a config update replaces the previous one: if a terminal has policy overrides, add its \"policy\"")
        print("     part to the file; and every later config update must carry privacy.seal_public_key too)")
        print("     or rebuild and install the bundles: chot provision bundle ID, then setup-terminal.sh")
        print("  terminals seal to the new key from the config update on; nothing already sealed changes")
    return 0


def _device(args):
    from provisioning.devices import provision_device
    from provisioning.fleet import Fleet, parse_assignments

    fleet = Fleet(args.fleet)
    bundle = provision_device(
        fleet, args.id, args.checkpoint, args.direction,
        pins=parse_assignments(args.pins, "--pins"), sets=parse_assignments(args.set, "--set"),
        trust=args.trust, wheel=args.wheel, renew=args.renew, dcc_schema=args.dcc_schema,
        dcc_valuesets=args.dcc_valuesets,
    )
    print(f"terminal {args.id} enrolled; config {fleet.device_dir(args.id) / 'terminal.toml'}")
    print(f"bundle: {bundle} (mode 0600: it holds the terminal's private key)")
    print(f"  it pins the collector's sealing key {fleet.seal_public()[0]} "
          f"({fleet.cfg.etc_dir.rstrip('/')}/collector-seal.pub)")
    print("on the Pi, as root:")
    print(f"  tar xzf {bundle.name} && ./chot-{args.id}/setup-terminal.sh")
    print("restart the broker (systemctl restart mosquitto) with its refreshed rules before the terminal")
    print("connects: until then the broker refuses it everything (its events wait in its outbox)")
    print(f"then bind it at the collector: chot provision registry --fleet {fleet.dir}, and "
          "chot collector devices import FLEET/registry.json")
    return 0


def _bundle(args):
    from provisioning.devices import rebuild_bundle
    from provisioning.fleet import Fleet

    print(f"bundle: {rebuild_bundle(Fleet(args.fleet), args.id, wheel=args.wheel)}")
    return 0


def _broker_config(args):
    from provisioning.broker import write_broker_config
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    conf = write_broker_config(
        fleet, args.out, port=args.port or fleet.cfg.broker_port, bind=args.bind, conf_dir=args.conf_dir,
        persistence_dir=args.persistence_dir, log_dest=args.log_dest, user=args.user,
        dynsec_plugin=args.dynsec_plugin,
    )
    print(f"broker config written: {conf}")
    print(f"  rights of {len(fleet.devices())} terminal(s) and {len(fleet.collector_users())} collector(s) in "
          f"{conf.parent / 'dynamic-security.json'}")
    print(f"  test it: mosquitto -c {conf}")
    print("  the broker reads the rights at start: restart it after enrolling or revoking a terminal")
    return 0


def _collector(args):
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    user, crt, key = fleet.provision_collector(args.name)
    print(f"collector instance {args.name}: MQTT user and client id {user!r}")
    print(f"  certificate {crt}, key {key} (0600): the instance's mqtt.cert and mqtt.key")
    for out in fleet.refresh_brokers():
        print(f"  broker config refreshed: {out}")
    print("restart the broker (systemctl restart mosquitto) so that it knows the new collector")
    return 0


def _revoke(args):
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    refreshed = fleet.revoke(args.id)
    print(f"terminal {args.id} revoked: its certificate is in {fleet.crl} and its user is denied everything "
          "in the broker's rules (dynamic-security.json)")
    for out in refreshed:
        print(f"  broker config refreshed: {out}")
    if not refreshed:
        print("  no broker config written yet: run `chot provision broker-config` and install it")
    print("apply it now: restart the broker (systemctl restart mosquitto): a reload (SIGHUP) reads the CRL")
    print("(no new connection), only a restart ends an open session and reads the rules; until then the")
    print("terminal can still use a connection it has open")
    return 0


def _crl(args):
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    print(f"CRL signed again: {fleet.write_crl()}")
    for out in fleet.refresh_brokers():
        print(f"  broker config refreshed: {out}")
    return 0


def _registry(args):
    from provisioning.devices import write_registry
    from provisioning.fleet import Fleet

    path, reg = write_registry(Fleet(args.fleet), args.out)
    print(f"registry written: {path} ({len(reg['devices'])} terminals, {len(reg['revoked'])} revoked)")
    print(f"load it into the collector: chot collector devices import {path}")
    return 0


def _list(args):
    from provisioning.fleet import Fleet

    fleet = Fleet(args.fleet)
    revoked = set(fleet.revoked_ids())
    for dev in fleet.devices():
        sys.stdout.write(f"{dev}\t{'revoked' if dev in revoked else 'enrolled'}\n")
    return 0
