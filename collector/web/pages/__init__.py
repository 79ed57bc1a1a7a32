"""The console's pages: one module each, found here by itself (see ../README.md).

Every module of this package that defines `router` (a fastapi.APIRouter; and `api_router`, its
JSON routes under /api/, if it has any) is included; adding a page is adding a file, nothing to
register. Its nav entry comes from `nav_item(path, label,
permission, order)` in the module; the bar is sorted by `order`.
"""

import importlib
import pkgutil


def routers():
    out = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        out += [r for r in (getattr(module, "router", None), getattr(module, "api_router", None)) if r is not None]
    return out
