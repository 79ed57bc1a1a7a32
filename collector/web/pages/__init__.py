"""The console's pages: one module each, its `router` listed in ROUTERS (see ../README.md).

The navigation bar lists the pages in the order their modules are imported here (each calls
nav_item at import): keep `home` first.
"""

from collector.web.pages import home

# isort: split
from collector.web.pages import traffic

# isort: split
from collector.web.pages import fleet

# isort: split
from collector.web.pages import paper

ROUTERS = [home.router, traffic.router, fleet.router, paper.router]
