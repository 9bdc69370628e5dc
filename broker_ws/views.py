"""HTTP endpoints a host mounts beside the stream (see the README)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from broker_ws.auth import get_login_resolver
from broker_ws.snapshot import account_snapshot, encode_snapshot


class AccountSnapshotView(APIView):
    """``GET``: the caller's current balances, open trades and active alerts as stream frames.

    Authenticated like the host's other API views (a simplejwt access token
    in the demo). ``?login=1001`` narrows it to one of the caller's logins;
    another login is answered 404, exactly as one that does not exist.
    """

    permission_classes = [IsAuthenticated]

    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        logins = [str(login) for login in get_login_resolver()(request.user)]
        wanted = request.query_params.get("login")
        if wanted is not None:
            if wanted not in logins:
                return HttpResponse(
                    b'{"detail":"no such login"}', status=404, content_type="application/json"
                )
            logins = [wanted]
        seqs, frames = account_snapshot(logins)
        return HttpResponse(encode_snapshot(seqs, frames), content_type="application/json")


def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus text format.

    Unprotected by itself: mount it behind whatever guards the host's other
    operational endpoints (the demo allows loopback and staff users).
    """
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
