"""Users and API tokens (admins): the list, and disabling or enabling a user.

The example of a page with a form that writes: POST with the session's `csrf_token` (checked by
`require`), then a redirect back (303) so that a reload does not post again.
"""

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from collector.web.accounts import Permission
from collector.web.app import N_, Forbidden, nav_item, render, require, web

log = logging.getLogger(__name__)
router = APIRouter()
nav_item("/users", N_("Users"), Permission.USERS_ADMIN, order=90)


@router.get("/users")
async def users(request: Request, principal=Depends(require(Permission.USERS_ADMIN))):
    w = web(request)
    return render(request, "users.html", {"users": await w.db(w.accounts.users),
                                          "tokens": await w.db(w.accounts.tokens)})


@router.post("/users/{name}/{action}")
async def set_disabled(request: Request, name: str, action: str,
                       principal=Depends(require(Permission.USERS_ADMIN))):
    if action not in ("disable", "enable"):
        raise Forbidden(f"unknown action {action!r}", status=404)
    if name == principal.name:
        raise Forbidden("you cannot disable yourself; ask another administrator")
    w = web(request)
    await w.db(w.accounts.set_disabled, name, action == "disable")
    log.warning("%s: user %s %sd", principal.actor, name, action)
    return RedirectResponse("/users", status_code=303)
