"""The demo's live page at "/"; the WebSocket shares "/" but is routed by asgi.py, not here."""

from collections.abc import Callable
from functools import wraps
from pathlib import Path

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.urls import reverse
from django.utils.safestring import mark_safe

from broker_ws.publish.feed import DEFAULT_SYMBOLS

ASSETS = Path(__file__).resolve().parent / "static" / "broker"


def _inline(name: str) -> str:
    """An asset's text, to inline into the page.

    Inlined rather than linked, so the page works wherever the demo runs: under
    daphne or uvicorn, with DEBUG off (no static file serving), without
    collectstatic and without a CDN. Read on every request so edits show on
    reload; the files are a few kilobytes.
    """
    text = (ASSETS / name).read_text(encoding="utf-8")
    lowered = text.lower()
    if "</script" in lowered or "</style" in lowered:
        raise ValueError(f"{name} would end its inline element early")
    return text


def index(request: HttpRequest) -> HttpResponse:
    """The live page: log in, quote board, balances, trades, alerts, notifications, frames.

    The client itself is ``static/broker/live.js``, the reference browser client of
    protocol v1; this view only inlines it and tells it where the REST endpoints are.
    """
    links = {
        "admin_url": reverse("admin:index"),
        "token_url": reverse("token_obtain_pair"),
        "refresh_url": reverse("token_refresh"),
        "snapshot_url": reverse("account_snapshot"),
    }
    config = {
        "symbols": list(DEFAULT_SYMBOLS),
        "tokenUrl": links["token_url"],
        "refreshUrl": links["refresh_url"],
        "snapshotUrl": links["snapshot_url"],
    }
    context = {
        **links,
        "config": config,
        "style": mark_safe(_inline("live.css")),  # our own files, checked by _inline
        "script": mark_safe(_inline("live.js")),
    }
    return render(request, "broker/index.html", context)


LOOPBACK = {"127.0.0.1", "::1"}


def operators_only(view: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    """Let a Prometheus scraper on this machine, or a logged-in staff user, through."""

    @wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        if request.META.get("REMOTE_ADDR") in LOOPBACK or request.user.is_staff:
            return view(request)
        return HttpResponseForbidden("operators only")

    return guarded
