"""Frame sources (picamera2, USB camera, image files, a synthetic crowd) and QR decoding."""
