"""The real processes of one fault run: Mosquitto, a private PostgreSQL, collectors, terminals.

Everything lives in one temporary folder; every process is started by us and ended by its own
pid (a process group for PostgreSQL, so that kill -9 takes its backends too).
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provisioning.localbroker import LocalBroker, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHECKPOINT = "faults-gate-1"
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_toml(path, data):
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    Path(path).write_text("\n".join(lines))


def faketime_lib():
    return next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)


_FAKETIME_OK = {}


def faketime_works(lib):
    """libfaketime with an unfaked monotonic clock must let Python's time.sleep work (0.9.10 does not)."""
    if lib not in _FAKETIME_OK:
        rc = Path(tempfile.mkdtemp(prefix="chot-faketime-")) / "rc"
        rc.write_text("-86400\n")
        r = subprocess.run([PY, "-c", "import time; time.sleep(0.01)"], capture_output=True,
                           env=dict(os.environ, LD_PRELOAD=lib, FAKETIME_TIMESTAMP_FILE=str(rc),
                                    FAKETIME_DONT_FAKE_MONOTONIC="1"))
        _FAKETIME_OK[lib] = r.returncode == 0
        shutil.rmtree(rc.parent, ignore_errors=True)
    return _FAKETIME_OK[lib]


def pg_bin_dir():
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for d in reversed(cands):
        if all(os.path.exists(os.path.join(d, b)) for b in ("initdb", "postgres")):
            return d
    return None


class Proc:
    """One child process with its log file, ended only through its own pid (or its own group)."""

    def __init__(self, name, argv, log_path, env=None, group=False, preexec=None, cwd=None):
        self.name, self.argv, self.log_path, self.env = name, argv, Path(log_path), env
        self.group, self.preexec, self.cwd = group, preexec, cwd
        self.p = None
        self.starts = 0

    def start(self):
        log = open(self.log_path, "ab")
        log.write(f"\n=== faults: start {self.name} at {time.time():.3f} ===\n".encode())
        log.flush()
        env = dict(os.environ)
        env.update(self.env or {})
        self.p = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                  start_new_session=self.group, preexec_fn=self.preexec, stdin=subprocess.DEVNULL)
        log.close()
        self.starts += 1
        return self

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if not self.alive():
            return False
        if self.group:
            os.killpg(self.p.pid, sig)
        else:
            self.p.send_signal(sig)
        return True

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout=20.0):
        """SIGTERM and wait; SIGKILL after `timeout`. Returns the seconds it took, or None if killed."""
        if not self.alive():
            return 0.0
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
            return time.monotonic() - t0
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def wait(self, timeout):
        if self.p is None:
            return
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temp dir, a free port), never the machine's."""

    def __init__(self, workdir):
        self.bin = pg_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                               "(Debian package postgresql): the PostgreSQL backend cannot run")
        # its own temp dir (the cluster's is 0700 root; the postgres user must reach this one)
        self.dir = Path(tempfile.mkdtemp(prefix="chot-faults-pg-"))
        self.link = Path(workdir)  # a symlink in the cluster's folder, for --keep
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.port = free_port()
        self.proc = None
        self._uid = self._gid = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            pw = pwd.getpwnam("postgres")
            self._uid, self._gid = pw.pw_uid, pw.pw_gid

    def _drop(self):
        if self._uid is not None:
            os.setgid(self._gid)
            os.setuid(self._uid)

    def init(self):
        self.sock.mkdir(exist_ok=True)
        try:
            self.link.symlink_to(self.dir)
        except OSError:
            pass
        if self._uid is not None:
            for p in (self.dir, self.sock):
                os.chown(p, self._uid, self._gid)
        r = subprocess.run([f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                            "-E", "UTF8", "--no-sync"], capture_output=True, preexec_fn=self._drop, cwd="/")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.decode()[-2000:].strip()}")
        return self

    def start(self):
        argv = [f"{self.bin}/postgres", "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=50",
                "-c", "shared_buffers=32MB"]
        self.proc = Proc("postgres", argv, self.dir / "postgres.log", group=True, preexec=self._drop, cwd="/")
        self.proc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.ready():
                return self
            if not self.proc.alive():
                break
            time.sleep(0.2)
        raise RuntimeError(f"private PostgreSQL did not start; see {self.dir / 'postgres.log'}")

    def ready(self):
        try:
            import psycopg2

            psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
            return True
        except Exception:
            return False

    def dsn(self, db="chot"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def createdb(self, name="chot"):
        import psycopg2

        c = psycopg2.connect(self.dsn("postgres"))
        c.autocommit = True
        c.cursor().execute(f'CREATE DATABASE "{name}"')
        c.close()

    def kill9(self):
        self.proc.kill9()

    def stop(self):
        if self.proc is not None:
            self.proc.signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(20)
            if self.proc.alive():
                self.proc.kill9()


class Terminal:
    """One `chot demo-terminal` subprocess (`chot terminal run` on the synthetic crowd) through
    faults.terminal_shim, the PASS-pulse witness."""

    def __init__(self, cluster, dev_id, seed, state_dir, faketime=False):
        self.cluster, self.id, self.seed = cluster, dev_id, seed
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = self.state_dir / "outbox.db"
        self.config = cluster.dir / f"{dev_id}.toml"
        self.log = cluster.dir / f"{dev_id}.log"
        self.pulses = cluster.dir / f"{dev_id}.pulses"
        self.faketime_file = cluster.dir / f"{dev_id}.faketime" if faketime else None
        env = {"CHOT_FAULTS_PULSES": str(self.pulses), "PYTHONUNBUFFERED": "1"}
        self.clock_method = None
        if faketime:
            self.faketime_file.write_text("+0\n")
            lib = faketime_lib()
            if lib and faketime_works(lib):
                self.clock_method = f"libfaketime ({lib})"
                env.update(LD_PRELOAD=lib, FAKETIME_TIMESTAMP_FILE=str(self.faketime_file),
                           FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_CACHE_DURATION="1")
            else:
                self.clock_method = "in-process wall clock offset (faults.terminal_shim)"
                env["CHOT_FAULTS_CLOCK_FILE"] = str(self.faketime_file)
        # `chot demo-terminal`: `chot terminal run` with the synthetic crowd plugged in as its camera
        self.proc = Proc(dev_id, [PY, "-m", "faults.terminal_shim", "-v", "demo-terminal", "--config",
                                  str(self.config), "--issuer-key", str(cluster.issuer_key)],
                         self.log, env=env, cwd=str(ROOT))
        self.write_config()

    def write_config(self):
        c = self.cluster
        s = c.settings
        write_toml(self.config, {
            "device": {"id": self.id, "checkpoint": CHECKPOINT, "direction": "in"},
            "scanner": {"source": "synthetic", "synthetic_seed": self.seed,
                        "cooldown_s": 0.2, "fps": 30.0, "width": 480, "height": 360, "second_pass": False},
            "pins": {"factory": "mock", "relay": "GPIO23"},
            "feedback": {"pass_led_s": 0.05, "fail_led_s": 0.05, "relay_s": 0.05, "fault_s": 0.1,
                         "pass_beeps": 1, "fail_beeps": 1, "unreadable_blinks": 1},
            "policy": {"trusted_issuers": [str(c.issuer_pub)]},
            "outbox": {"path": str(self.outbox), "retention_days": 3650.0, "synchronous": "FULL"},
            "privacy": {"seal_public_key": str(c.key_dir / "seal.pub")},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": c.proxy.port,
                     "ack_timeout_s": s["ack_timeout_s"], "keepalive_s": s["keepalive_s"],
                     "status_interval_s": 10.0, "collector_public_key": str(c.collector_pub),
                     "reconnect_min_s": s["reconnect_min_s"], "reconnect_max_s": s["reconnect_max_s"]},
        })

    def start(self):
        self.proc.start()
        return self


class Collector:
    def __init__(self, cluster, cid):
        self.cluster, self.id = cluster, cid
        self.config = cluster.dir / f"collector-{cid}.toml"
        self.log = cluster.dir / f"collector-{cid}.log"
        write_toml(self.config, {
            "collector": {"id": cid, "database": cluster.db_url, "batch_size": 500, "batch_max_wait_ms": 100,
                          "signing_key": str(cluster.collector_priv), "key_dir": str(cluster.key_dir),
                          "purge_interval_s": 86400.0, "gap_report_s": 30.0},
            "mqtt": {"host": "127.0.0.1", "port": cluster.broker.port, "reconnect_min_s": 0.5,
                     "reconnect_max_s": 5.0},
            "http": {"enabled": False},
        })
        self.proc = Proc(f"collector-{cid}", [PY, "-m", "chot.cli", "-v", "collector", "run", "--config",
                                              str(self.config)], self.log, cwd=str(ROOT))

    def start(self):
        self.proc.start()
        return self


class Cluster:
    """Broker (persistence on), proxy, one collector, N terminals, on one backend."""

    def __init__(self, workdir, backend, settings, n_terminals=3, seed=1, tmpfs_terminal=True):
        from chot.personal import generate_seal_keys  # noqa: F401  (fails early if chot is broken)
        from collector.keys import make_key_dir
        from device.credentials import keys
        from faults.proxy import Proxy

        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backend, self.settings, self.seed = backend, settings, seed
        ik = keys.generate("ed25519")
        self.issuer_key, self.issuer_pub = keys.save_keypair(ik, self.dir / "issuer")
        ck = keys.generate("ed25519")
        self.collector_priv, self.collector_pub = keys.save_keypair(ck, self.dir / "collector", stem="collector")
        self.key_dir = self.dir / "collector-keys"
        make_key_dir(self.key_dir)
        self.pg = None
        if backend == "postgresql":
            self.pg = PrivatePostgres(self.dir / "pg").init().start()
            self.pg.createdb("chot")
            self.db_url = self.pg.dsn("chot")
        else:
            self.db_url = f"sqlite:///{self.dir / 'collector.db'}"
        self.broker = LocalBroker(self.dir / "mosquitto", persistence=True).start()
        self.proxy = Proxy(self.broker.port).start()
        self.collectors = {"c1": Collector(self, "c1")}
        self.tmpfs = None
        self.tmpfs_note = None
        self.terminals = []
        self.faketime_note = None
        for i in range(n_terminals):
            dev = f"t{i + 1}"
            state = self.dir / f"{dev}-state"
            if i == 2 and tmpfs_terminal:
                state = self._mount_tmpfs(state)
            self.terminals.append(Terminal(self, dev, seed * 100 + i + 1, state, faketime=(i == 1)))

    def _mount_tmpfs(self, path):
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.tmpfs_note = "not root: cannot mount a small tmpfs, disk-full skipped"
            return path
        size = self.settings["tmpfs_mb"]
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m,mode=0700", "tmpfs", str(path)],
                           capture_output=True)
        if r.returncode:
            self.tmpfs_note = f"mount tmpfs failed ({r.stderr.decode().strip()}): disk-full skipped"
            return path
        self.tmpfs = path
        return path

    def start(self):
        for c in self.collectors.values():
            c.start()
        self.wait_collector_db()
        for t in self.terminals:
            t.start()
        return self

    def wait_collector_db(self, timeout=60):
        from faults.ledger import collector_ready

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if collector_ready(self):
                return True
            time.sleep(0.2)
        raise RuntimeError(f"the collector did not create its schema in {timeout} s; see {self.dir}/collector-c1.log")

    def broker_up(self):
        return self.broker.proc is not None and self.broker.proc.poll() is None and wait_port(self.broker.port, 0.2)

    def close(self):
        for t in self.terminals:
            t.proc.stop(10)
        for c in self.collectors.values():
            c.proc.stop(10)
        self.proxy.stop()
        self.broker.stop(kill=True)
        if self.pg is not None:
            self.pg.stop()
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)

    def remove(self):
        if self.pg is not None:
            shutil.rmtree(self.pg.dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
