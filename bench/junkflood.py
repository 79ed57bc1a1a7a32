"""Junk flood (issue 11): 20 invalid 1 MB batches at a real Mosquitto; bytes of collector log and time to refuse.

    .venv/bin/python bench/junkflood.py

A standalone measurement (not an area of bench/run.py): one run, printed on one line.
"""

import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chot import wire
from chotdemo.testing import collector_config, make_keys
from collector.subscriber import Collector
from provisioning.localbroker import LocalBroker

buf = io.StringIO()
h = logging.StreamHandler(buf)
h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger("collector").addHandler(h)
logging.getLogger("collector").setLevel(logging.INFO)
tmp = Path(tempfile.mkdtemp())
b = LocalBroker(tmp / "mq")
b.start()
make_keys(tmp / "keys")
cfg = collector_config(f"sqlite:///{tmp}/c.db", port=b.port, key_dir=tmp / "keys")
item = json.dumps({"v": 2, "junk": "x" * 150}).encode()
n = (wire.MAX_MESSAGE_BYTES - 120) // (len(item) + 1)
junk = b'{"batch":[' + b",".join([item] * n) + b"]}"
with Collector(cfg) as col:
    col.wait_subscribed()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-j", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    t0 = time.monotonic()
    for _ in range(20):
        c.publish(wire.event_topic("gate-j"), junk, qos=1)
    while col.stats()["rejected"].get("invalid_event", 0) < 20 * n:
        time.sleep(0.01)
    dt = time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
b.stop()
print(f"20 batches x {n} invalid events ({len(junk)} bytes each): refused in {dt:.1f} s, "
      f"{len(buf.getvalue().encode())} bytes of collector log")
