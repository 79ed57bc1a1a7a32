"""A publisher process for the collector and drain benchmarks: publishes prepared messages at full speed.

    python -m bench.publish '{"port": 1883, "devices": ["d1", "d2"], "messages": 10000}'
    python -m bench.publish '{"port": 1883, "outbox": "PATH", "device": "d1", "batch": 100}'

It prepares every payload first (valid wire events from collector.testing.make_event, one event
per message spread round-robin over `devices`; or the bodies of an outbox file in batches of
`batch` events), connects (MQTT 5, QoS 1, 100 in flight), prints "ready", waits for a line on
stdin, publishes everything, waits for every PUBACK and prints {"published", "seconds"} as JSON.
"""

import json
import sqlite3
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt


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
    from collector.testing import make_event

    devices = spec["devices"]
    seqs = dict.fromkeys(devices, 0)
    out = []
    for i in range(int(spec["messages"])):
        d = devices[i % len(devices)]
        seqs[d] += 1
        ev = make_event(d, seqs[d], subject_key=f"{(i * 7919) % 100003:064x}", checkpoint=f"cp-{i % 50}")
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

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(int(spec.get("inflight", 100)))
    c.on_publish = on_publish
    c.connect("127.0.0.1", int(spec["port"]), keepalive=30)
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
    print(json.dumps({"published": acked[0], "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
