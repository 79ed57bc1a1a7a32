"""The start page: who is signed in, and what their role lets them do."""

from fastapi import APIRouter, Depends, Request

from collector.web.app import N_, nav_item, render, require

router = APIRouter()
nav_item("/", N_("Home"))


@router.get("/")
async def home(request: Request, principal=Depends(require())):
    return render(request, "home.html", {"permissions": sorted(str(p) for p in principal.permissions)})
