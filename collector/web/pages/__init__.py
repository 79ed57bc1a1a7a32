"""The console's pages: one module each, its `router` listed in ROUTERS (see ../README.md)."""

from collector.web.pages import fleet, home, paper, traffic

ROUTERS = [home.router, traffic.router, fleet.router, paper.router]
