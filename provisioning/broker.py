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


def acl_text(fleet):
    """The ACL: each device only its own topics, the collector everything it serves, revoked users nothing."""
    col = fleet.cfg.collector_user
    lines = [
        "# Chot broker ACL, made by `chot provision broker-config`; do not edit by hand.",
        "# The MQTT user is the client certificate's CN (use_identity_as_username): a device id, or the collector.",
        "",
        "# Every terminal: it writes only its own events and status, reads only its own ack and config",
        "# and the signed broadcasts (deny list, trusted issuers).",
        f"pattern write {PREFIX}/dev/%u/event",
        f"pattern write {PREFIX}/dev/%u/status",
        f"pattern read {PREFIX}/dev/%u/ack",
        f"pattern read {PREFIX}/dev/%u/config",
        f"pattern read {PREFIX}/broadcast/#",
        "",
        "# The collector: reads every event (shared subscription $share/<group>/...) and status,",
        "# writes acks, configs and broadcasts.",
        f"user {col}",
        f"topic read {PREFIX}/dev/+/event",
        f"topic read {PREFIX}/dev/+/status",
        f"topic write {PREFIX}/dev/+/ack",
        f"topic write {PREFIX}/dev/+/config",
        f"topic write {PREFIX}/broadcast/#",
        "",
    ]
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
# Sessions (the collector's queue while it is down, a terminal's subscriptions) are kept this long.
persistent_client_expiration 14d
max_keepalive 300
set_tcp_nodelay true

# Persistence is a snapshot every autosave_interval seconds, not a journal: what arrived since
# the last save is lost on a crash. That is acceptable only because a terminal keeps each
# event in its outbox until the collector's ack covers it, and sends it again.
persistence true
persistence_location {str(persistence_dir).rstrip("/")}/
autosave_interval 60

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
