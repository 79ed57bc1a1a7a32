"""The console's pages: one module each, its `router` listed in ROUTERS (see ../README.md).

The order of the imports is the order of the navigation bar (each module calls nav_item).
"""

from collector.web.pages import home, users

ROUTERS = [home.router, users.router]
