"""The console's pages: one module each, its `router` listed in ROUTERS (see ../README.md)."""

from collector.web.pages import home

ROUTERS = [home.router]
