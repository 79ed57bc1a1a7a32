"""The faults. Each `inject(ctx)` waits a random (seeded) moment, injects its fault once and returns when
the fault has ended (the process restarted, the link back); the runner then measures the recovery
and reconciles the window. `skip(ctx)` says why a fault cannot run here (or None).
"""

import json
import os
import signal
import time
import uuid as uuidlib
from datetime import UTC, datetime


def _now_iso():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _moment(ctx, lo=0.5, hi=None):
    time.sleep(ctx.rng.uniform(lo, hi if hi is not None else ctx.s["settle_max_s"]))


def _pick(ctx, terms=None):
    return ctx.rng.choice(terms or ctx.cluster.terminals)


class Fault:
    name = "?"
    what = ""
    backends = ("sqlite", "postgresql")
    counted = True  # False: the runs publish their own events (hostile batches)

    def skip(self, ctx):
        return None

    def setup(self, ctx):
        pass

    def inject(self, ctx):
        raise NotImplementedError

    def teardown(self, ctx):
        pass


class KillTerminal(Fault):
    name = "kill9_terminal"
    what = "kill -9 of a terminal while it scans, restarted 0.5-2 s later"

    def inject(self, ctx):
        t = _pick(ctx)
        _moment(ctx)
        t.proc.kill9()
        ctx.note(f"{t.id} killed")
        time.sleep(ctx.rng.uniform(0.5, 2.0))
        t.start()


class KillBroker(Fault):
    name = "kill9_broker_persist"
    what = "kill -9 of Mosquitto (persistence on, autosave 1 s), restarted 0.5-2 s later"
    persistence = True

    def setup(self, ctx):
        b = ctx.cluster.broker
        if b.persistence != self.persistence:
            b.persistence = self.persistence
            b.restart()
            ctx.note(f"broker restarted gracefully with persistence {'on' if self.persistence else 'off'}")

    def inject(self, ctx):
        _moment(ctx)
        b = ctx.cluster.broker
        b.stop(kill=True)
        time.sleep(ctx.rng.uniform(0.5, 2.0))
        b.start()

    def teardown(self, ctx):
        b = ctx.cluster.broker
        if not b.persistence:
            b.persistence = True
            b.restart()
            ctx.note("broker restarted gracefully with persistence on again")


class KillBrokerNoPersist(KillBroker):
    name = "kill9_broker_nopersist"
    what = "kill -9 of Mosquitto without persistence (sessions and queues lost), restarted"
    persistence = False


class KillCollector(Fault):
    name = "kill9_collector"
    what = "collector paused 1-3 s (a backlog queues), resumed, kill -9 while it drains it, restarted"

    def inject(self, ctx):
        c = ctx.cluster.collectors["c1"]
        _moment(ctx)
        c.proc.signal(signal.SIGSTOP)
        time.sleep(ctx.rng.uniform(1.0, 3.0))
        c.proc.signal(signal.SIGCONT)
        time.sleep(ctx.rng.uniform(0.05, 0.5))
        c.proc.kill9()
        time.sleep(ctx.rng.uniform(0.5, 2.0))
        c.start()


class KillPostgres(Fault):
    name = "kill9_postgresql"
    what = "kill -9 of the private PostgreSQL (postmaster and backends), restarted 1-3 s later"
    backends = ("postgresql",)

    def inject(self, ctx):
        pg = ctx.cluster.pg
        _moment(ctx)
        pg.kill9()
        time.sleep(ctx.rng.uniform(1.0, 3.0))
        pg.start()


class BrokerDown(Fault):
    name = "broker_down"
    what = "Mosquitto stopped for the outage time while the terminals keep scanning"

    def inject(self, ctx):
        _moment(ctx)
        b = ctx.cluster.broker
        b.stop()
        time.sleep(ctx.s["outage_s"])
        b.start()


class Partition(Fault):
    name = "partition_blackhole"
    what = "the proxy stops forwarding (sockets stay open, no RST) for the partition time"

    def inject(self, ctx):
        _moment(ctx)
        ctx.cluster.proxy.set_mode("blackhole")
        time.sleep(ctx.s["partition_s"])
        ctx.cluster.proxy.set_mode("forward")


class DiskFull(Fault):
    name = "disk_full"
    what = "a terminal's state dir is a small tmpfs: filled with a ballast file, freed after a while"

    def skip(self, ctx):
        if ctx.cluster.tmpfs is None:
            return ctx.cluster.tmpfs_note or "no tmpfs"
        return None

    def inject(self, ctx):
        c = ctx.cluster
        t = c.terminals[2]
        _moment(ctx)
        ballast = c.tmpfs / "ballast"
        n = 0
        with open(ballast, "wb", buffering=0) as f:
            for size in (1 << 20, 1 << 12, 1):
                block = b"\0" * size
                while True:
                    try:
                        f.write(block)
                        n += size
                    except OSError:
                        break
        ctx.note(f"{t.id}: ballast {n // 1024} KiB filled its tmpfs")
        time.sleep(ctx.s["disk_hold_s"])
        before = ctx.ledger.tops()[t.id]
        ballast.unlink()
        # does the terminal record again by itself once the disk has room?
        t0 = time.monotonic()
        while time.monotonic() - t0 < ctx.s["deadline_s"] / 2:
            if ctx.ledger.tops()[t.id] > before:
                ctx.note(f"{t.id} recorded again {time.monotonic() - t0:.1f} s after the disk was freed")
                return
            time.sleep(0.25)
        ctx.note(f"{t.id} did NOT record again within {ctx.s['deadline_s'] / 2:.0f} s after the disk was freed")
        ctx.failed("terminal stuck after disk freed")


class ClockJump(Fault):
    name = "clock_jump"
    what = "a terminal under libfaketime: wall clock jumped back, then forward, then restored"

    def skip(self, ctx):
        if ctx.cluster.faketime_note:
            return ctx.cluster.faketime_note
        return None

    def inject(self, ctx):
        t = ctx.cluster.terminals[1]
        _moment(ctx)
        back = -int(ctx.rng.uniform(2 * 3600, 10 * 86400))
        fwd = int(ctx.rng.uniform(3600, 400 * 86400))
        for off in (back, fwd, 0):
            t.faketime_file.write_text(f"{off:+d}\n")
            time.sleep(ctx.s["clock_hold_s"])
        ctx.note(f"{t.id} ({t.clock_method}): clock jumped {back / 3600:+.1f} h, then {fwd / 3600:+.1f} h, "
                 "then restored")
        ctx.clock_window.add(t.id)


class TwoCollectors(Fault):
    name = "two_collectors_one_dies"
    what = "a second collector joins the shared subscription, is killed -9 and left down"

    def setup(self, ctx):
        from faults.cluster import Collector

        c = ctx.cluster
        if "c2" not in c.collectors:
            c.collectors["c2"] = Collector(c, "c2")

    def inject(self, ctx):
        c2 = ctx.cluster.collectors["c2"]
        c2.start()
        time.sleep(3.0)  # subscribed and taking its share
        _moment(ctx)
        c2.proc.kill9()
        ctx.note("c2 killed and left down")


class SigtermBurst(Fault):
    name = "sigterm_burst"
    what = "SIGTERM of a terminal while it scans at full speed, restarted"

    def inject(self, ctx):
        t = _pick(ctx)
        _moment(ctx)
        took = t.proc.stop(timeout=15)
        if took is None:
            ctx.note(f"{t.id} did not stop within 15 s of SIGTERM (killed)")
            ctx.failed("SIGTERM did not stop the terminal")
        else:
            ctx.note(f"{t.id} stopped {took:.1f} s after SIGTERM")
        time.sleep(ctx.rng.uniform(0.3, 1.0))
        t.start()


class OfflineBacklog(Fault):
    name = "offline_backlog"
    what = "all terminals offline (proxy refuses); one gets a large backlog in its outbox; reconnect"

    def inject(self, ctx):
        c = ctx.cluster
        t = c.terminals[0]
        _moment(ctx)
        c.proxy.set_mode("refuse")
        t.proc.stop(timeout=15)
        n = fill_backlog(t, ctx.s["backlog"])
        t.start()
        time.sleep(ctx.s["offline_s"])
        c.proxy.set_mode("forward")
        ctx.note(f"{t.id}: {n} events added to its outbox while offline (Outbox.append, one transaction)")


def fill_backlog(term, n):
    """Append n FAIL/unsigned events to a stopped terminal's outbox through the product's Outbox."""
    from device.clock import clock_quality
    from device.uplink.outbox import Outbox

    ob = Outbox(term.outbox, max_rows=10_000_000, max_bytes=1 << 34, retention_days=3650, device_id=term.id,
                defaults={"checkpoint": "faults-gate-1", "direction": "in"})
    try:
        with ob._lock, ob._db.atomic():
            for _ in range(n):
                ob.append({"source": "camera", "format": "plain", "decision": "FAIL", "reason": "unsigned",
                           "verified": False, "time": _now_iso(), "clock": clock_quality()})
    finally:
        ob.close()
    return n


class HostileBatch(Fault):
    name = "hostile_batch"
    what = "batches of 10 published straight to the broker, one bad: Feb 30 / mono_ns 2**63 / NUL checkpoint"
    counted = False
    BAD = ("feb30", "mono_2p63", "nul_checkpoint")

    def inject(self, ctx):
        from chot import wire
        from chot.mqtt import MqttSettings, build_client, connect

        _moment(ctx, 0.2, 1.0)
        settings = MqttSettings(host="127.0.0.1", port=ctx.cluster.broker.port,
                                client_id=f"faults-hostile-{os.getpid()}", keepalive_s=60)
        cl = build_client(settings)
        connect(cl, settings)
        cl.loop_start()
        expect = {}
        try:
            for kind in self.BAD:
                dev = f"hostile-{ctx.run_no}-{kind.replace('_', '-')}"
                bad = ctx.rng.randrange(10)
                events = []
                for i in range(10):
                    ev = {"v": 2, "device_id": dev, "seq": i + 1, "uuid": str(uuidlib.uuid4()),
                          "checkpoint": "faults-gate-1", "direction": "in", "time": _now_iso(),
                          "clock": {"synced": True, "boot_id": "faults", "mono_ns": time.monotonic_ns()},
                          "source": "camera", "format": "plain", "decision": "FAIL", "reason": "unsigned",
                          "verified": False, "sealed": None}
                    if i == bad:
                        if kind == "feb30":
                            ev["time"] = "2021-02-30T10:00:00Z"
                        elif kind == "mono_2p63":
                            ev["clock"]["mono_ns"] = 2**63
                        else:
                            ev["checkpoint"] = "gate\u0000one"
                    events.append(ev)
                payload = json.dumps({"batch": events}).encode()
                cl.publish(wire.event_topic(dev), payload, qos=1).wait_for_publish(10)
                expect[dev] = ({e["seq"]: e["uuid"] for j, e in enumerate(events) if j != bad}, bad + 1)
        finally:
            cl.loop_stop()
            cl.disconnect()
        ctx.hostile = expect


FAULTS = [KillTerminal(), KillBroker(), KillBrokerNoPersist(), KillCollector(), KillPostgres(), BrokerDown(),
          Partition(), DiskFull(), ClockJump(), SigtermBurst(), OfflineBacklog(), HostileBatch(), TwoCollectors()]
BY_NAME = {f.name: f for f in FAULTS}
