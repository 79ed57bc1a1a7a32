"""Moved: the console and JSON API are collector.web (FastAPI on uvicorn; issue 12).

`ApiServer` stays importable from here for old callers; it is `collector.web.WebServer`.
"""

from collector.web import ApiServer, WebServer, create_app

__all__ = ["ApiServer", "WebServer", "create_app"]
