"""A local Mosquitto for development, the demo and the tests: loopback only, no TLS.

`LocalBroker(workdir)` writes its own mosquitto.conf into `workdir` (raised queue and
in-flight limits: Mosquitto's defaults drop QoS 1 messages silently, see DESIGN.md), starts
the broker on a free loopback port, waits until it accepts connections, and can be stopped
(gracefully or with SIGKILL) and restarted on the same port. A fleet's real broker uses the
TLS configuration of `provisioning.broker` instead.

Anonymous by default (the unit tests). `LocalBroker(workdir, secure=True)` is the demo's and the
fault harness's broker: `allow_anonymous false`, and the fleet's own rules through Mosquitto's
dynamic-security plugin (`provisioning.broker.dynsec_config`, the very function that writes the
fleet broker's): every user logs in with its password (PBKDF2-SHA512 hashes in
`dynamic-security.json`, 0600), its user name is its client id (`use_username_as_clientid`: no
client takes over another's session by choosing its client id), a terminal may write only its
own events and status and subscribe only to its own ack and config and the broadcasts (never a
`$share/` group, `#` or `$SYS`), and only the collectors write acks, configs and broadcasts.
Without it anyone on the machine could forge an ack (a terminal then marks events delivered
that the collector never stored), publish events that take a device's future seqs, or take a
share of every terminal's events. Credentials:

    user, password_file = broker.add_terminal("gate-1-in")   # -> mqtt.username, mqtt.password_file
    user, password_file = broker.collector_credentials()     # the collector's, made with the broker
    user, password_file = broker.add_collector("b")          # another collector instance: "collector-b"

Each password file (0600, under `workdir/credentials/`) holds one random password. Users may be
added before `start()` or while running: the plugin reads its file only at start, so a running
broker is told through the plugin's own control topic (`$CONTROL/dynamic-security/v1`, by an
administrator user only this object knows); connected clients stay connected, and the call
returns only once the broker accepts the new password. Users survive `restart()` and a new
`LocalBroker` on the same `workdir`.

Persistence (`persistence=True`) is a snapshot, not a journal (DESIGN.md, "Traps"): a session
or a queued message that arrived after the last snapshot is gone after `kill -9`. The local
broker snapshots every `autosave_interval` seconds (default 1 s: Mosquitto saves when more than
that has passed, so at most about 2 s are exposed), and `save()` writes one at once (SIGUSR1)
and waits until it is on disk: call it after the collector has subscribed, so that its session
(and what is queued for it) survives a crash that comes sooner.
"""

import base64
import hashlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from chot.errors import ProvisioningError

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
AUTOSAVE_S = 1  # the local broker's snapshot interval (seconds, time based); see save()
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own default for its "$7$" (PBKDF2-SHA512) hashes
ADMIN_USER = "_chot-admin"  # the dynamic-security administrator (no device id starts with "_")
ADMIN_ROLE = "chot-local-admin"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def password_hash(password, salt=None):
    """A password file entry's hash in Mosquitto's "$7$" format (what `mosquitto_passwd` writes)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_fields(password, salt=None):
    """A dynamic-security client's password fields: PBKDF2-SHA512 with a 12-byte salt, base64."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": PBKDF2_ITERATIONS}


def _mqtt_string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def try_login(port, username, password, host="127.0.0.1", timeout=2.0):
    """The CONNACK return code of an MQTT 3.1.1 login (0 accepted, 4 bad password, 5 not authorised),
    or None when no CONNACK came. Used to know when a reloaded password file is in force."""
    body = (_mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)  # user+password+clean session
            + _mqtt_string(f"chot-login-probe-{secrets.token_hex(4)}") + _mqtt_string(username)
            + _mqtt_string(password))
    n, length = len(body), b""
    while True:  # MQTT's variable-length "remaining length"
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"\x10" + length + body)
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    return None
                got += chunk
            if got[0] != 0x20:
                return None
            if got[3] == 0:
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return got[3]
    except OSError:
        return None


class LocalBroker:
    """A private Mosquitto broker on a loopback port (the demo, the tests, the fault harness)."""

    # Raised limits: the defaults drop QoS 1 messages silently (see DESIGN.md).
    # `user root` keeps a broker started by root able to read its own temp files (ignored otherwise).
    # A finite max_queued_messages: with 0, Mosquitto 2.0.11 disconnects a client after refusing
    # one of its publishes (PUBACK 135, then "Unspecified error").
    LIMITS = (
        "user root\n"
        "max_queued_messages 10000000\n"
        "max_inflight_messages 0\n"
        "max_queued_bytes 0\n"
        "max_packet_size 2000000\n"
    )
    BASE = LIMITS + "allow_anonymous true\n"  # the anonymous broker (kept for callers that read it)

    def __init__(self, workdir, conf_extra="", persistence=False, port=None, listener_conf=None, secure=False,
                 collector_user="collector", autosave_interval=AUTOSAVE_S):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.autosave_interval = int(autosave_interval)
        self.conf_extra = conf_extra
        self.listener_conf = listener_conf  # full override of the listener block
        self.secure = secure
        self.collector_user = collector_user
        self.proc = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.db_path = self.workdir / "mosquitto.db"
        self.dynsec_path = self.workdir / "dynamic-security.json"
        self.cred_dir = self.workdir / "credentials"
        self.admin_path = self.cred_dir / "admin.secret"  # the plugin administrator's password (0600)
        self._users = {}  # MQTT user -> password
        if secure:
            self._check_user(collector_user)
            self._load_users()
            self._user(collector_user)

    # --- users (secure mode) -------------------------------------------------------------------

    @staticmethod
    def _check_user(name):
        from chot.wire import DEVICE_ID_RE

        if not isinstance(name, str) or not DEVICE_ID_RE.fullmatch(name):
            raise ProvisioningError(
                f"MQTT user {name!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )

    def _cred_path(self, name):
        return self.cred_dir / f"{name}.password"

    def _load_users(self):
        if self.cred_dir.is_dir():
            for f in sorted(self.cred_dir.glob("*.password")):
                self._users[f.name[: -len(".password")]] = f.read_text(encoding="utf-8").strip()

    def _secret_file(self, path):
        """The password in `path`, made (random, 0600) when missing."""
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
        self.cred_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        os.chmod(path, 0o600)
        return password

    def _user(self, name):
        """(password file, is new) of user `name`; a new one gets a random password (file 0600)."""
        path = self._cred_path(name)
        if name in self._users:
            return path, False
        self._users[name] = self._secret_file(path)
        return path, True

    def _need_secure(self, what):
        if not self.secure:
            raise ProvisioningError(f"{what} needs an authenticated broker: LocalBroker(workdir, secure=True)")

    def is_collector(self, user):
        return user == self.collector_user or user.startswith(f"{self.collector_user}-")

    def add_terminal(self, device_id):
        """Make (or return) the MQTT login of terminal `device_id`: (username, password_file).

        Its user name is its device id (and its client id), which the rules bind it to. On a
        running broker the plugin is told at once, and this returns once the broker accepts the login.
        """
        self._need_secure("add_terminal")
        self._check_user(device_id)
        if self.is_collector(device_id):
            raise ProvisioningError(f"{device_id!r} is a collector's MQTT user: give the terminal another id")
        return self._add(device_id)

    def add_collector(self, name):
        """Make (or return) the login of another collector instance, user `<collector_user>-<name>`:
        each instance its own user and client id. Returns (username, password_file)."""
        self._need_secure("add_collector")
        user = f"{self.collector_user}-{name}"
        self._check_user(user)
        return self._add(user)

    def _add(self, user):
        path, new = self._user(user)
        if new and self.running:
            self._control_add(user)
            deadline = time.monotonic() + 10
            while try_login(self.port, user, self._users[user]) != 0:
                if time.monotonic() > deadline:
                    raise ProvisioningError(f"mosquitto did not take the new user {user}")
                time.sleep(0.05)
        return user, path

    def collector_credentials(self):
        """The collector's MQTT login: (username, password_file) (mqtt.username, mqtt.password_file)."""
        self._need_secure("collector_credentials")
        return self.collector_user, self._cred_path(self.collector_user)

    def password(self, user):
        """The password of `user` (for test clients; the terminal and the collector read their file)."""
        self._need_secure("password")
        return self._users[user]

    def dynsec(self):
        """The plugin's file (a dict): the fleet's rules for these users, their password hashes, and the
        administrator that adds users to the running broker."""
        from provisioning.broker import ROLE_DENY, _acl, dynsec_config

        users = sorted(self._users)
        admin_role = {"rolename": ADMIN_ROLE, "textname": "adds users to the running local broker", "acls": [
            _acl("publishClientSend", CONTROL_TOPIC),
            _acl("publishClientReceive", f"{CONTROL_TOPIC}/response"),
            _acl("subscribeLiteral", f"{CONTROL_TOPIC}/response"),
        ]}
        admin = {"username": ADMIN_USER, "textname": "LocalBroker administrator",
                 "roles": [{"rolename": ADMIN_ROLE, "priority": 10}, {"rolename": ROLE_DENY, "priority": -1000}],
                 **password_fields(self._secret_file(self.admin_path))}
        return dynsec_config([u for u in users if not self.is_collector(u)], [u for u in users if self.is_collector(u)],
                             passwords=self._users, extra_clients=[admin], extra_roles=[admin_role])

    def _write_auth(self):
        from provisioning.broker import dynsec_text

        fd = os.open(self.dynsec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dynsec_text(self.dynsec()))
        os.chmod(self.dynsec_path, 0o600)

    def _control_add(self, user):
        """Add `user` to the running broker through the plugin's control topic, with the rules that
        `dynsec()` writes for it (the plugin saves them to its file itself)."""
        from provisioning.broker import DENY_PRIORITY, ROLE_COLLECTOR, ROLE_DENY, device_acls, device_role

        commands = []
        if self.is_collector(user):
            role = ROLE_COLLECTOR
        else:
            role = device_role(user)
            commands.append({"command": "createRole", "rolename": role, "textname": f"terminal {user}",
                             "acls": device_acls(user)})
        commands.append({"command": "createClient", "username": user, "password": self._users[user],
                         "textname": user, "roles": [{"rolename": role, "priority": 10},
                                                     {"rolename": ROLE_DENY, "priority": DENY_PRIORITY}]})
        answers = self.control(commands)
        failed = [a for a in answers if a.get("error")]
        if failed:
            raise ProvisioningError(f"mosquitto refused to add user {user}: {failed}")

    def control(self, commands, timeout=10.0):
        """Send commands to the dynamic-security plugin as its administrator; return its responses."""
        import json
        import threading

        from chot.mqtt import MqttSettings, build_client, connect

        settings = MqttSettings(host="127.0.0.1", port=self.port, client_id=ADMIN_USER, username=ADMIN_USER,
                                password_file=str(self.admin_path), reconnect_on_failure=False, keepalive_s=10,
                                section="local broker administrator")
        client = build_client(settings)
        got, done, subscribed = {}, threading.Event(), threading.Event()
        client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        client.on_message = lambda c, u, m: (got.setdefault("responses", json.loads(m.payload)), done.set())
        try:
            connect(client, settings)
        except OSError as exc:
            raise ProvisioningError(f"cannot reach the local broker on port {self.port}: {exc}") from None
        client.loop_start()
        try:
            client.subscribe(f"{CONTROL_TOPIC}/response", qos=1)
            if not subscribed.wait(timeout):
                raise ProvisioningError("the local broker did not answer its administrator's subscription")
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            if not done.wait(timeout):
                raise ProvisioningError(f"the local broker did not answer {[c['command'] for c in commands]}")
        finally:
            client.disconnect()
            client.loop_stop()
        return got["responses"].get("responses", [])

    # --- configuration, processes ---------------------------------------------------------------

    def write_conf(self):
        listener = self.listener_conf or f"listener {self.port} 127.0.0.1\n"
        if self.secure:
            from provisioning.broker import find_dynsec_plugin

            plugin = find_dynsec_plugin()
            if not Path(plugin).is_file():
                raise ProvisioningError(f"mosquitto's dynamic-security plugin is not at {plugin}: install the "
                                        "Debian package mosquitto (2.0 or newer), which ships it")
            self._write_auth()
            auth = f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {self.dynsec_path}\n"
            # the user name is the client id: no client takes another's session over
            listener = listener.rstrip("\n") + "\nuse_username_as_clientid true\n"
        else:
            auth = "allow_anonymous true\n"
        conf = self.LIMITS + auth + listener + self.conf_extra
        if self.persistence:
            # time based (autosave_on_changes false): saving on every change cut publishing to ~1/150
            conf += (f"persistence true\npersistence_location {self.workdir}/\n"
                     f"autosave_interval {self.autosave_interval}\nautosave_on_changes false\n")
        else:
            conf += "persistence false\n"
        conf += f"log_dest file {self.log_path}\nlog_type error\nlog_type warning\nlog_type notice\n"
        self.conf_path.write_text(conf)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        if not Path(MOSQUITTO).exists():
            raise ProvisioningError(
                "mosquitto is not installed: `make demo` / `make test` install it, or run `apt-get install mosquitto`"
            )
        self.write_conf()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if not wait_port(self.port):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            log = self.log_path.read_text() if self.log_path.exists() else ""
            self.stop(kill=True)
            raise ProvisioningError(f"mosquitto did not start on port {self.port}: {err} {log}")
        return self

    def reload(self):
        """SIGHUP: Mosquitto reads its configuration again (connected clients stay); the plugin's
        users and rules are read only at start (users are added through `control`)."""
        if self.running:
            self.proc.send_signal(signal.SIGHUP)

    def _db_stamp(self):
        try:
            st = self.db_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def save(self, timeout=10.0):
        """Write the persistence snapshot now (SIGUSR1) and wait until it is on disk.

        Mosquitto writes mosquitto.db.new and renames it over mosquitto.db, so a new inode marks
        a finished save. Returns False when persistence is off or the broker is not running.
        """
        if not (self.persistence and self.running):
            return False
        before = self._db_stamp()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._db_stamp()
            if now is not None and now != before:
                return True
            time.sleep(0.01)
        raise ProvisioningError(f"mosquitto did not write {self.db_path} within {timeout} s of SIGUSR1")

    def stop(self, kill=False):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill=False):
        self.stop(kill=kill)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
