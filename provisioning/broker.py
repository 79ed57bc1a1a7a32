"""The broker's configuration: mosquitto.conf for TLS with client certificates, and its ACL.

`write_broker_config(fleet, out_dir, port=8883)` writes into `out_dir`:

    mosquitto.conf   a TLS listener that requires a certificate from the fleet CA and takes the
                     certificate's CN as the MQTT user (use_identity_as_username), checks the
                     CRL, refuses anonymous clients, and raises the queue and in-flight limits
                     whose defaults drop QoS 1 messages silently (DESIGN.md, "Traps")
    acl              per-topic rights (see `acl_text`)
    ca.crt, server.crt, server.key (0600), crl.pem   copies from the fleet directory

Written for Mosquitto 2.0 (Debian 12 ships 2.0.11). The paths inside mosquitto.conf are those of
`conf_dir` (default: `out_dir` itself), so the files can be copied to /etc/mosquitto/chot on
the broker host. `chot provision revoke` rewrites acl and crl.pem in every directory written
before; the broker applies them when restarted (`systemctl restart mosquitto`).
"""

import logging
from pathlib import Path

from chot.wire import PREFIX
from provisioning import pki

log = logging.getLogger(__name__)


def acl_rules(collector_user):
    """The topic rights of every Chot broker: the fleet's TLS broker (`acl_text`) and the local one
    (`provisioning.localbroker.LocalBroker(secure=True)`) write exactly these lines.

    A terminal's MQTT user is its device id; the collector's is `collector_user`. Mosquitto checks a
    shared subscription (`$share/<group>/chot/v1/dev/+/event`) against the topic without its
    `$share/<group>/` prefix, so the collector's read rules cover it. A publish outside these rules
    gets PUBACK reason code 135 (MQTT 5) and is dropped: no terminal can forge an ack, a config, a
    broadcast, or another terminal's events.
    """
    return [
        "# Every terminal (user = device id): it writes only its own events and status, reads only",
        "# its own ack and config and the signed broadcasts (deny list, trusted issuers). It writes",
        "# no ack, config or broadcast, not even its own.",
        f"pattern write {PREFIX}/dev/%u/event",
        f"pattern write {PREFIX}/dev/%u/status",
        f"pattern read {PREFIX}/dev/%u/ack",
        f"pattern read {PREFIX}/dev/%u/config",
        f"pattern read {PREFIX}/broadcast/#",
        "",
        "# The collector: reads every event (shared subscription $share/<group>/...) and status,",
        "# writes acks, configs and broadcasts.",
        f"user {collector_user}",
        f"topic read {PREFIX}/dev/+/event",
        f"topic read {PREFIX}/dev/+/status",
        f"topic write {PREFIX}/dev/+/ack",
        f"topic write {PREFIX}/dev/+/config",
        f"topic write {PREFIX}/broadcast/#",
        "",
    ]


def acl_text(fleet):
    """The ACL: each device only its own topics, the collector everything it serves, revoked users nothing."""
    lines = [
        "# Chot broker ACL, made by `chot provision broker-config`; do not edit by hand.",
        "# The MQTT user is the client certificate's CN (use_identity_as_username): a device id, or the collector.",
        "",
    ] + acl_rules(fleet.cfg.collector_user)
    revoked = fleet.revoked_ids()
    lines.append("# Revoked terminals: denied everything even if their certificate were still accepted.")
    for dev in revoked:
        lines += [f"user {dev}", "topic deny #", ""]
    if not revoked:
        lines.append("# (none)")
    return "\n".join(lines) + "\n"


def conf_text(fleet, conf_dir, port=8883, bind=None, persistence_dir="/var/lib/mosquitto", log_dest="syslog",
              user="mosquitto"):
    d = str(conf_dir).rstrip("/")
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    return f"""\
# Mosquitto 2.0 configuration for the Chot fleet, made by `chot provision broker-config`.
# Regenerate it instead of editing: `chot provision broker-config --fleet DIR --out DIR`.

# Started as root, mosquitto drops to this user BEFORE it reads the ACL and the TLS files:
# they must be readable by it (server.key: 0600 owned by it).
user {user}
per_listener_settings false
allow_anonymous false
acl_file {d}/acl

# Queues and in-flight windows. Mosquitto's defaults (max_queued_messages 1000,
# max_inflight_messages 20) DROP QoS 1 messages silently once a client falls behind, while
# every publish is still PUBACKed. A terminal's outbox and the collector's acks bound what is
# outstanding, so the queue limit is set far above it; not 0 ("no limit"), because with 0
# Mosquitto 2.0.11 disconnects a client right after refusing one of its publishes.
max_queued_messages 10000000
max_queued_bytes 0
max_inflight_messages 0
max_inflight_bytes 0
# A batch of events is at most 1 MiB (chot.wire.MAX_MESSAGE_BYTES).
max_packet_size 2000000
# Sessions (a terminal's subscriptions, what is queued for a client that is away) end this long
# after their client left, whatever session expiry the client asked for (terminals and the
# collector ask 7 days). A session only bridges a restart or a short outage: after that the
# terminals' outboxes are the queue, and they send again what the collector has not acked (at
# once when its presence says it is back). A short cap bounds what an abandoned session (a dead
# collector, a retired terminal) holds in the broker's memory and in every snapshot; nothing is
# lost when one expires, the client subscribes again when it reconnects.
persistent_client_expiration 1h
max_keepalive 300
set_tcp_nodelay true

# Persistence is a snapshot every autosave_interval seconds, not a journal: what arrived since
# the last save is lost on a crash. That is acceptable only because a terminal keeps each
# event in its outbox until the collector's ack covers it, and sends it again. Time based, every
# 10 s: a new session (the collector's subscription) reaches the disk within about 10 s, so a
# broker crash soon after loses it only in that window (then what terminals publish before the
# collector subscribes again is dropped, and waits for their resend). A snapshot rewrites the
# whole database: negligible with short queues, about 0.25 s with 100,000 messages queued
# (27 MB, measured). Not autosave_on_changes: counting every queued message, it saves over and
# over under load (saving on every change cut publishing from 33,000 to 214 messages/s).
persistence true
persistence_location {str(persistence_dir).rstrip("/")}/
autosave_interval 10
autosave_on_changes false

log_dest {log_dest}
log_type error
log_type warning
log_type notice
connection_messages true

# TLS: every client must present a certificate from the fleet CA, not revoked; its CN is
# its MQTT user name.
{listener}
protocol mqtt
cafile {d}/ca.crt
certfile {d}/server.crt
keyfile {d}/server.key
crlfile {d}/crl.pem
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""


def write_broker_config(fleet, out_dir, port=8883, bind=None, conf_dir=None,
                        persistence_dir="/var/lib/mosquitto", log_dest="syslog", user="mosquitto"):
    """Write mosquitto.conf, acl and the TLS files into `out_dir`; return the conf path.

    Run as root with `user` existing, the server key is handed to that user (mosquitto 2.0
    loads it after dropping privileges).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    conf_dir = conf_dir or out
    if not fleet.crl.exists():
        fleet.write_crl()
    pki.write_file(out / "ca.crt", fleet.ca_crt.read_bytes())
    pki.write_file(out / "server.crt", fleet.server_crt.read_bytes())
    key = pki.write_private(out / "server.key", fleet.server_key.read_bytes())
    _give_to(key, user)
    pki.write_file(out / "crl.pem", fleet.crl.read_bytes())
    pki.write_file(out / "acl", acl_text(fleet))
    conf = pki.write_file(
        out / "mosquitto.conf",
        conf_text(fleet, conf_dir, port=port, bind=bind, persistence_dir=persistence_dir, log_dest=log_dest,
                  user=user),
    )
    fleet.remember_broker_output(
        out,
        {"port": port, "bind": bind, "conf_dir": str(conf_dir), "persistence_dir": str(persistence_dir),
         "log_dest": log_dest, "user": user},
    )
    return conf


def _give_to(path, user):
    """chown `path` to `user` when we are root and the user exists; else leave it (and say so)."""
    import os
    import pwd

    if user == "root" or os.geteuid() != 0:
        if user not in ("root", _me()):
            log.warning("%s: make it readable by the broker's user %s (chown %s)", path, user, user)
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        log.warning("user %s does not exist here: on the broker host run `chown %s %s`", user, user, path)
        return
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _me():
    import getpass

    return getpass.getuser()
