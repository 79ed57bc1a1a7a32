"""The broker's configuration: mosquitto.conf for TLS with client certificates, and its access rules.

`write_broker_config(fleet, out_dir, port=8883)` writes into `out_dir`:

    mosquitto.conf          a TLS listener that requires a certificate from the fleet CA, takes the
                            certificate's CN as the MQTT user (use_identity_as_username) and the user as
                            the client id (use_username_as_clientid), checks the CRL, refuses anonymous
                            clients, loads the dynamic-security plugin, and raises the queue and
                            in-flight limits whose defaults drop QoS 1 messages silently (DESIGN.md)
    dynamic-security.json   every client's rights (see `dynsec_config`): publish, receive, subscribe
    ca.crt, server.crt, server.key (0600), crl.pem   copies from the fleet directory

Written for Mosquitto 2.0 (Debian 12 ships 2.0.11). The paths inside mosquitto.conf are those of
`conf_dir` (default: `out_dir` itself), so the files can be copied to /etc/mosquitto/chot on
the broker host. `chot provision device`, `collector` and `revoke` rewrite dynamic-security.json
and crl.pem in every directory written before; the broker applies the rights when RESTARTED
(`systemctl restart mosquitto`: the plugin reads its file only at start) and the CRL on a reload.

Why the dynamic-security plugin and no acl_file: Mosquitto 2.0.11's acl_file never checks a
subscription (security_default.c answers "allowed" to every SUBSCRIBE), so any client could join
the collectors' `$share/...` group and take a share of every terminal's events. The plugin checks
subscriptions against the topic filter as sent, `$share/<group>/` included. It answers for the
users it knows and passes on the others; with no acl_file behind it, a user it does not know (a
terminal enrolled after the broker's last start) is refused everything: it fails closed, and
that terminal's events wait in its outbox until the broker is restarted with the new file.
"""

import json
import logging
import platform
from pathlib import Path

from chot.wire import PREFIX
from provisioning import pki

log = logging.getLogger(__name__)

DYNSEC_FILE = "dynamic-security.json"
DYNSEC_NAME = "mosquitto_dynamic_security.so"
# Debian's multiarch folders, then other layouts: a broker on a Raspberry Pi is aarch64 (or armhf)
DYNSEC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
               "/usr/lib", "/usr/local/lib", "/usr/lib64", "/opt/homebrew/lib")
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
              "arm64": "aarch64-linux-gnu", "armv7l": "arm-linux-gnueabihf", "armv6l": "arm-linux-gnueabihf"}

ROLE_DENY = "chot-deny-all"
ROLE_COLLECTOR = "chot-collector"
DENY_PRIORITY = -1000  # the deny-all role is attached to every client below its own rights


def find_dynsec_plugin():
    """The dynamic-security plugin of this machine's Mosquitto, or Debian's path for this architecture.

    Give another with `broker-config --dynsec-plugin` when the broker host differs (a Pi: aarch64).
    """
    for d in DYNSEC_DIRS:
        cand = Path(d) / DYNSEC_NAME
        if cand.is_file():
            return str(cand)
    arch = _MULTIARCH.get(platform.machine().lower(), "x86_64-linux-gnu")
    return f"/usr/lib/{arch}/{DYNSEC_NAME}"


def device_role(device_id):
    return f"chot-device-{device_id}"


def _acl(acltype, topic, allow=True, priority=0):
    return {"acltype": acltype, "topic": topic, "allow": allow, "priority": priority}


def device_acls(device_id):
    """One terminal's rights (dynsec 2.0 substitutes no %u, so each device has a role of its own)."""
    dev = f"{PREFIX}/dev/{device_id}"
    return [
        _acl("publishClientSend", f"{dev}/event"),
        _acl("publishClientSend", f"{dev}/status"),
        _acl("publishClientReceive", f"{dev}/ack"),
        _acl("publishClientReceive", f"{dev}/config"),
        _acl("publishClientReceive", f"{PREFIX}/broadcast/#"),
        _acl("subscribeLiteral", f"{dev}/ack"),
        _acl("subscribeLiteral", f"{dev}/config"),
        _acl("subscribePattern", f"{PREFIX}/broadcast/#"),
    ]


def collector_acls():
    """Every collector instance's rights: reads events (its shared subscription) and statuses, writes
    acks, configs, broadcasts (signed lists, its presence) and may clear a device's retained status."""
    dev = f"{PREFIX}/dev/+"
    return [
        _acl("publishClientSend", f"{dev}/ack"),
        _acl("publishClientSend", f"{dev}/config"),
        _acl("publishClientSend", f"{dev}/status"),
        _acl("publishClientSend", f"{PREFIX}/broadcast/#"),
        _acl("publishClientReceive", f"{dev}/event"),
        _acl("publishClientReceive", f"{dev}/status"),
        _acl("publishClientReceive", f"{PREFIX}/broadcast/#"),
        _acl("subscribePattern", f"$share/+/{dev}/event"),
        _acl("subscribePattern", f"$share/+/{dev}/status"),
        _acl("subscribePattern", f"{dev}/event"),
        _acl("subscribePattern", f"{dev}/status"),
        _acl("subscribePattern", f"{PREFIX}/broadcast/#"),
    ]


def deny_acls():
    """The last word for every client: nothing else. `#` matches every filter in the plugin's
    subscribe check (`$share/...` and `$SYS/...` too); `$share/#` and `$SYS/#` are listed anyway.
    For publish and receive `#` matches no `$` topic (MQTT's rule), so `$SYS/#` and `$CONTROL/#`
    (the plugin's own administration topic) are denied by name."""
    return [
        _acl("subscribePattern", "#", allow=False),
        _acl("subscribePattern", "$share/#", allow=False),
        _acl("subscribePattern", "$SYS/#", allow=False),
        _acl("publishClientSend", "#", allow=False),
        _acl("publishClientSend", "$SYS/#", allow=False),
        _acl("publishClientSend", "$CONTROL/#", allow=False),
        _acl("publishClientReceive", "#", allow=False),
        _acl("publishClientReceive", "$SYS/#", allow=False),
        _acl("publishClientReceive", "$CONTROL/#", allow=False),
    ]


def _client(username, roles, password=None, disabled=False, text=None):
    c = {"username": username, "textname": text or username,
         "roles": [{"rolename": r, "priority": p} for r, p in roles] + [{"rolename": ROLE_DENY,
                                                                          "priority": DENY_PRIORITY}]}
    if disabled:
        c["disabled"] = True
    if password is not None:
        from provisioning.localbroker import password_fields

        c.update(password_fields(password))
    return c


def dynsec_config(devices, collectors, revoked=(), passwords=None, extra_clients=(), extra_roles=()):
    """The dynamic-security plugin's file (a dict): every client's rights, nothing by default.

    `devices`: terminal ids (each its own role); `collectors`: the collector instances' user names;
    `revoked`: ids denied everything (kept listed so that no rule of theirs is left anywhere);
    `passwords`: {user: password} for a broker with password logins (the local one; the fleet's
    broker authenticates by certificate and lists no password). Every client ends with the
    deny-all role, and `defaultACLAccess` is false throughout: what is not granted is refused.
    """
    passwords = passwords or {}
    revoked = sorted(set(revoked))
    devices = [d for d in sorted(set(devices)) if d not in revoked]
    roles = [
        {"rolename": ROLE_DENY, "textname": "every client, last: nothing else", "acls": deny_acls()},
        {"rolename": ROLE_COLLECTOR, "textname": "collector instances", "acls": collector_acls()},
    ]
    roles += [{"rolename": device_role(d), "textname": f"terminal {d}", "acls": device_acls(d)} for d in devices]
    roles += list(extra_roles)
    clients = [_client(c, [(ROLE_COLLECTOR, 10)], passwords.get(c), text=f"collector {c}") for c in sorted(collectors)]
    clients += [_client(d, [(device_role(d), 10)], passwords.get(d), text=f"terminal {d}") for d in devices]
    clients += [_client(d, [], disabled=True, text=f"revoked terminal {d}") for d in revoked]
    clients += list(extra_clients)
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def dynsec_text(config):
    return json.dumps(config, indent=1) + "\n"


def fleet_dynsec(fleet):
    """The fleet broker's dynamic-security config: enrolled terminals, collector instances, revoked ids."""
    revoked = fleet.revoked_ids()
    return dynsec_config(fleet.devices(), fleet.collector_users(), revoked)


def conf_text(fleet, conf_dir, port=8883, bind=None, persistence_dir="/var/lib/mosquitto", log_dest="syslog",
              user="mosquitto", dynsec_plugin=None):
    d = str(conf_dir).rstrip("/")
    plugin = dynsec_plugin or find_dynsec_plugin()
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    return f"""\
# Mosquitto 2.0 configuration for the Chot fleet, made by `chot provision broker-config`.
# Regenerate it instead of editing: `chot provision broker-config --fleet DIR --out DIR`.

# Started as root, mosquitto drops to this user BEFORE it reads the access rules and the TLS
# files: they must be readable by it (server.key: 0600 owned by it).
user {user}
per_listener_settings false
allow_anonymous false

# Every client's rights: the dynamic-security plugin (bundled with Mosquitto) and its file, read
# at start only (restart the broker after `chot provision device` / `collector` / `revoke`).
# Not acl_file: Mosquitto 2.0.11's acl_file never checks subscriptions, so any client could join
# the collectors' $share group. Nothing is granted by default; a user the file does not name is
# refused everything. The plugin's path differs per architecture (broker-config --dynsec-plugin).
plugin {plugin}
plugin_opt_config_file {d}/{DYNSEC_FILE}

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
# its MQTT user name, and its user name its client id: whatever client id it asks for, a
# terminal cannot take over the collector's or another terminal's session (its own connection
# with the same certificate takes its own session over, as any reconnect does).
{listener}
protocol mqtt
cafile {d}/ca.crt
certfile {d}/server.crt
keyfile {d}/server.key
crlfile {d}/crl.pem
require_certificate true
use_identity_as_username true
use_username_as_clientid true
tls_version tlsv1.2
"""


def write_broker_config(fleet, out_dir, port=8883, bind=None, conf_dir=None,
                        persistence_dir="/var/lib/mosquitto", log_dest="syslog", user="mosquitto",
                        dynsec_plugin=None):
    """Write mosquitto.conf, dynamic-security.json and the TLS files into `out_dir`; return the conf path.

    Run as root with `user` existing, the server key is handed to that user (mosquitto 2.0
    loads it after dropping privileges). `dynsec_plugin`: the plugin's path on the broker host
    (default: `find_dynsec_plugin()`, this machine's).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    conf_dir = conf_dir or out
    dynsec_plugin = dynsec_plugin or find_dynsec_plugin()
    if not fleet.crl.exists():
        fleet.write_crl()
    pki.write_file(out / "ca.crt", fleet.ca_crt.read_bytes())
    pki.write_file(out / "server.crt", fleet.server_crt.read_bytes())
    key = pki.write_private(out / "server.key", fleet.server_key.read_bytes())
    _give_to(key, user)
    pki.write_file(out / "crl.pem", fleet.crl.read_bytes())
    pki.write_file(out / DYNSEC_FILE, dynsec_text(fleet_dynsec(fleet)))
    old_acl = out / "acl"  # written before issue 11; no longer read (acl_file checks no subscription)
    if old_acl.is_file() and old_acl.read_text(encoding="utf-8", errors="replace").startswith("# Chot broker ACL"):
        old_acl.unlink()
    conf = pki.write_file(
        out / "mosquitto.conf",
        conf_text(fleet, conf_dir, port=port, bind=bind, persistence_dir=persistence_dir, log_dest=log_dest,
                  user=user, dynsec_plugin=dynsec_plugin),
    )
    fleet.remember_broker_output(
        out,
        {"port": port, "bind": bind, "conf_dir": str(conf_dir), "persistence_dir": str(persistence_dir),
         "log_dest": log_dest, "user": user, "dynsec_plugin": dynsec_plugin},
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
