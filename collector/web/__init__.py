"""The tracers' console and JSON API (issue 12): FastAPI on uvicorn, Jinja2 pages, Babel catalogues.

`create_app(cfg, storage, collector=None)` builds the application; `WebServer` serves it in a
thread (what `chot collector run` and `make demo` use). README.md here: how to add a page.
"""

from collector.web.app import create_app
from collector.web.server import WebServer

ApiServer = WebServer  # the name of the stdlib server it replaced

__all__ = ["ApiServer", "WebServer", "create_app"]
