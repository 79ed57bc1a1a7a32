"""The terminal daemon: camera frames in, pass/fail feedback and durable events out.

Sub-packages follow the path of a scan: `scanner` (frames and QR decoding), `credentials`
(formats, verification and policy: pure logic), `io` (GPIO feedback) and `uplink` (the
outbox and the MQTT link). `device.daemon` wires them.
"""
