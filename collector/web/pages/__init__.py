"""The console's pages: one module each, its `router` listed in ROUTERS (see ../README.md)."""

from collector.web.pages import audit, cases, home

ROUTERS = [home.router, cases.router, audit.router]
