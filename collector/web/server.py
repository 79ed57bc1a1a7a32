"""`WebServer`: the console on uvicorn in a background thread (`start()`, `stop()`, `url`, `port`, `with`).

Bounds (issue 12): uvicorn runs one event loop, so an idle or stalled socket costs no thread;
queries run in a thread pool of `http.threads`; at most `http.max_connections` connections
(more get 503); a connection that has not sent a whole request within HEADER_TIMEOUT_S is
closed (slowloris), and so is an idle keep-alive one after KEEP_ALIVE_S; request headers are
capped at MAX_HEADER_BYTES (h11). Beyond loopback it serves only with TLS (http.tls_cert /
http.tls_key) or behind http.trusted_proxy.
"""

import asyncio
import logging
import socket
import threading

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from chot.errors import CollectorError
from collector.config import is_loopback
from collector.web.security import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request does not arrive in HEADER_TIMEOUT_S."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timeout)

    def _header_timeout(self):
        if self.cycle is None and not self.transport.is_closing():  # no request has started yet
            self.transport.close()

    def connection_lost(self, exc):
        self._header_timer.cancel()
        super().connection_lost(exc)


class WebServer:
    """The console (collector.web.create_app) served by uvicorn in a thread."""

    def __init__(self, cfg, storage, collector=None, host=None, port=None, app=None):
        h = cfg.http
        self.host = host or h.host
        self.tls = bool(h.tls_cert and h.tls_key)
        if not (is_loopback(self.host) or self.tls or h.trusted_proxy):
            raise CollectorError(
                f"refusing to serve the console on {self.host}: beyond loopback it needs http.tls_cert and "
                "http.tls_key, or a reverse proxy with TLS in front of it (http.trusted_proxy)"
            )
        if app is None:
            from collector.web.app import create_app

            app = create_app(cfg, storage, collector)
        self.app = app
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((self.host, h.port if port is None else port))
        except OSError as exc:
            self.sock.close()
            raise CollectorError(
                f"cannot listen on {self.host}:{h.port if port is None else port}: {exc.strerror}; change [http] "
                "port or stop what uses it"
            ) from None
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        kwargs = {}
        if self.tls:
            import ssl

            try:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(h.tls_cert, h.tls_key)
            except (OSError, ssl.SSLError) as exc:
                self.sock.close()
                raise CollectorError(f"cannot use http.tls_cert / http.tls_key: {exc}") from None
            kwargs = {"ssl_certfile": h.tls_cert, "ssl_keyfile": h.tls_key}
        self.threads = h.threads
        self.config = uvicorn.Config(
            app, http=_Protocol, ws="none", lifespan="off", log_config=None, access_log=False,
            limit_concurrency=h.max_connections, timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=5,
            proxy_headers=False, server_header=False, date_header=True, **kwargs,
        )
        self.server = uvicorn.Server(self.config)
        self._thread = None
        self._started = threading.Event()

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def _serve(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main():
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self.server.config.setup_event_loop = lambda: None
            await self.server.serve(sockets=[self.sock])

        try:
            loop.run_until_complete(main())
        except Exception:
            log.exception("the console stopped")
        finally:
            self._started.set()
            loop.close()

    def start(self):
        self.server.install_signal_handlers = lambda: None  # signals belong to the main thread
        self._thread = threading.Thread(target=self._serve, name="collector-http", daemon=True)
        self._thread.start()
        for _ in range(200):
            if self.server.started or not self._thread.is_alive():
                break
            self._started.wait(0.05)
        if not self.server.started:
            raise CollectorError(f"the console did not start on {self.url}; see the log above")
        log.info("console on %s", self.url)
        return self

    def stop(self):
        if self._thread:
            self.server.should_exit = True
            self._thread.join(10)
            self._thread = None
        try:
            self.sock.close()
        except OSError:
            pass

    close = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
