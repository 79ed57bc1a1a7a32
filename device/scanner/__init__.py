"""Frame sources (picamera2, USB camera, image files; plug-ins such as the demo's synthetic crowd) and QR decoding."""
