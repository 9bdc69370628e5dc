"""The demo's landing page; the WebSocket shares "/" but is routed by asgi.py, not here."""

from collections.abc import Callable
from functools import wraps
from html import escape

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import reverse

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>broker_ws demo</title></head>
<body>
<h1>broker_ws demo</h1>
<ul>
  <li>WebSocket stream: <code>{ws_url}</code></li>
  <li>Admin (edit balances, trades and alerts to see pushes): <a href="{admin}">{admin}</a></li>
  <li>JWT token endpoint (POST username/password): <code>{token}</code>,
      refresh: <code>{refresh}</code></li>
</ul>
<p>Run <code>python manage.py demo_data</code> to create demo users and accounts.</p>
</body>
</html>
"""


def index(request: HttpRequest) -> HttpResponse:
    scheme = "wss" if request.is_secure() else "ws"
    return HttpResponse(
        _PAGE.format(
            ws_url=escape(f"{scheme}://{request.get_host()}/"),
            admin=escape(reverse("admin:index")),
            token=escape(reverse("token_obtain_pair")),
            refresh=escape(reverse("token_refresh")),
        )
    )


LOOPBACK = {"127.0.0.1", "::1"}


def operators_only(view: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    """Let a Prometheus scraper on this machine, or a logged-in staff user, through."""

    @wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        if request.META.get("REMOTE_ADDR") in LOOPBACK or request.user.is_staff:
            return view(request)
        return HttpResponseForbidden("operators only")

    return guarded
