"""A small TCP proxy between the terminals and the broker, able to cut the link in two ways.

`forward`: bytes flow both ways. `blackhole`: nothing is read or forwarded any more and no new
connection is served, but no socket is closed (a partition: peers see silence, not a reset);
`forward` again resumes with whatever the kernel buffered. `refuse`: every connection is closed
and the port refuses new ones (a terminal that is plainly offline).
"""

import selectors
import socket
import threading


class Proxy:
    def __init__(self, target_port, port=None, host="127.0.0.1"):
        self.host, self.target_port = host, target_port
        self.port = port
        self.mode = "forward"
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._pairs = {}  # socket -> its peer
        self._listener = None
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = None

    def start(self):
        self._listen()
        self._thread = threading.Thread(target=self._loop, name="faults-proxy", daemon=True)
        self._thread.start()
        return self

    def _listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port or 0))
        s.listen(128)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self._listener = s
        self._sel.register(s, selectors.EVENT_READ, "accept")

    def _poke(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def set_mode(self, mode):
        assert mode in ("forward", "blackhole", "refuse")
        with self._lock:
            old, self.mode = self.mode, mode
            if old == mode:
                return
            if old == "blackhole":  # watch the sockets again
                for s in self._pairs:
                    self._sel.register(s, selectors.EVENT_READ, "conn")
                if self._listener is not None:
                    self._sel.register(self._listener, selectors.EVENT_READ, "accept")
            if mode == "blackhole":  # stop reading and accepting; close nothing
                for s in self._pairs:
                    self._sel.unregister(s)
                if self._listener is not None:
                    self._sel.unregister(self._listener)
            elif mode == "refuse":
                for s in list(self._pairs):
                    self._close(s)
                if self._listener is not None:
                    if old != "blackhole":
                        self._sel.unregister(self._listener)
                    self._listener.close()
                    self._listener = None
            if mode == "forward" and self._listener is None:
                self._listen()
        self._poke()

    def _close(self, s):
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._pairs.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.close()
            except OSError:
                pass

    def _loop(self):
        while not self._stop:
            ready = self._sel.select(0.2)
            with self._lock:
                for key, _ in ready:
                    if key.data == "wake":
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif self.mode != "forward":
                        continue
                    elif key.data == "accept":
                        self._accept()
                    else:
                        self._pump(key.fileobj)

    def _accept(self):
        try:
            c, _ = self._listener.accept()
        except (OSError, AttributeError):
            return
        try:
            u = socket.create_connection((self.host, self.target_port), timeout=2)
        except OSError:
            c.close()
            return
        for s in (c, u):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[c], self._pairs[u] = u, c
        self._sel.register(c, selectors.EVENT_READ, "conn")
        self._sel.register(u, selectors.EVENT_READ, "conn")

    def _pump(self, s):
        peer = self._pairs.get(s)
        if peer is None:
            return
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(s)
            return
        try:
            peer.setblocking(True)
            peer.settimeout(5)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._close(s)

    def connections(self):
        with self._lock:
            return len(self._pairs) // 2

    def stop(self):
        self._stop = True
        self._poke()
        if self._thread:
            self._thread.join(3)
        with self._lock:
            for s in list(self._pairs):
                self._close(s)
            if self._listener is not None:
                self._listener.close()
