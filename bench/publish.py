"""A publisher process for the collector and drain benchmarks: publishes prepared messages at full speed.

    python -m bench.publish '{"port": 1883, "devices": ["d1", "d2"], "messages": 10000, "seal_pub": "PATH"}'
    python -m bench.publish '{"port": 1883, "outbox": "PATH", "device": "d1", "batch": 100}'

It prepares every payload first (valid v2 wire events from chotdemo.testing.make_event, one
event per message spread round-robin over `devices`; or the bodies of an outbox file in batches
of `batch` events), connects (MQTT 5, QoS 1, 100 in flight), prints "ready", waits for a line on
stdin, publishes everything, waits for every PUBACK and prints {"published", "seconds", "bytes"}
as JSON. With `seal_pub` (a collector's seal.pub) each event is a verified PASS whose personal
part is SEALED as a terminal seals it: one chot.personal.Sealer per device (its own ephemeral
key, a new one every 1000 events, the default), holding a realistic person of a native
declaration (bench.common.native_people: ID number, name with diacritics, phone, birth date,
address, ward, health answers, purpose, doses). Sealing is done before "ready", so it is not in
the timed part. Event times are the last hour before now (so they fall in today's retention
and, on PostgreSQL, in day partitions).
"""

import json
import sqlite3
import sys
import threading
import time
import uuid

from chot.mqtt import MqttSettings, build_client, connect


def _payloads(spec):
    from chot import wire

    if spec.get("outbox"):
        con = sqlite3.connect(spec["outbox"])
        bodies = [b for (b,) in con.execute("SELECT body FROM event ORDER BY seq")]
        con.close()
        b = int(spec.get("batch", 100))
        topic = wire.event_topic(spec["device"])
        return [(topic, ('{"batch":[' + ",".join(bodies[i : i + b]) + "]}").encode())
                for i in range(0, len(bodies), b)]
    from datetime import UTC, datetime, timedelta

    from chot.personal import Sealer
    from chotdemo.testing import make_event

    devices = spec["devices"]
    n = int(spec["messages"])
    seqs = dict.fromkeys(devices, 0)
    sealers = {d: Sealer.from_file(spec["seal_pub"]) for d in devices} if spec.get("seal_pub") else None
    people = []
    if sealers:
        from bench.common import native_people

        people = native_people(max(1, min(n, int(spec.get("people", 2000)))), seed=int(spec.get("seed", 1)))
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    step = 3600.0 / max(n, 1)
    out = []
    for i in range(n):
        d = devices[i % len(devices)]
        seqs[d] += 1
        kw = {}
        if sealers:
            person, pid, cred = people[(i * 7919) % len(people)]
            kw = {"person": person, "person_id": pid, "credential_id": cred, "sealer": sealers[d]}
        ev = make_event(d, seqs[d], time=start + timedelta(seconds=i * step), checkpoint=f"cp-{i % 50}", **kw)
        out.append((wire.event_topic(d), wire.encode_events([ev])))
    return out


def main():
    spec = json.loads(sys.argv[1])
    msgs = _payloads(spec)
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1
        if acked[0] >= len(msgs):
            done.set()

    settings = MqttSettings(host="127.0.0.1", port=int(spec["port"]), client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
                            max_inflight=int(spec.get("inflight", 100)))
    c = build_client(settings)
    c.on_publish = on_publish
    connect(c, settings)
    c.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()
    t = time.perf_counter()
    for topic, payload in msgs:
        c.publish(topic, payload, qos=1)
    done.wait(600)
    seconds = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"published": acked[0], "seconds": seconds, "bytes": sum(len(p) for _t, p in msgs)}),
          flush=True)


if __name__ == "__main__":
    main()
