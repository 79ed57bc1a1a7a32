"""The tracers' console and JSON API (issue 12): FastAPI on uvicorn, Jinja2 pages, Babel catalogues.

`create_app(cfg, storage, collector=None)` builds the application; `WebServer` serves it in a
thread (what `chot collector run` and `make demo` use). README.md here: how to add a page.
"""

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # a collector installed without the console's extra
    from chot.errors import CollectorError

    raise CollectorError(f"the console needs {exc.name}: pip install 'chot[console]' (or set [http] enabled = "
                         "false, or run with --no-http)") from None

from collector.web.app import create_app  # noqa: E402
from collector.web.server import WebServer  # noqa: E402

ApiServer = WebServer  # the name of the stdlib server it replaced

__all__ = ["ApiServer", "WebServer", "create_app"]
