"""HTTP endpoints a host mounts beside the stream (docs/guide.md tells how)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import Error as DatabaseError  # InterfaceError is not a DatabaseError
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.views import TokenRefreshView as BaseTokenRefreshView

from broker_ws import metrics
from broker_ws.auth.tokens import get_login_resolver
from broker_ws.outbox.snapshot import account_snapshot, encode_snapshot, last_states
from broker_ws.publish.revocation import is_revoked

logger = logging.getLogger(__name__)

#: The body of a 503: the same for every database failure, with no driver text.
UNAVAILABLE_BODY = b'{"detail":"the database is unavailable; retry later"}'


class ServiceUnavailableOnDatabaseError:
    """Mixin for a DRF view: a database error while handling a request (its
    authentication included) is answered **503** with ``Retry-After`` and
    ``{"detail": "the database is unavailable; retry later"}``, and logged as one
    WARNING line, instead of a 500 with a traceback in the log.

    A failing (or exhausted) database is temporary and not the client's fault; the
    driver's text, which names the database host and port, stays in the log. Put it
    first among the bases: ``class LoginView(ServiceUnavailableOnDatabaseError,
    TokenObtainPairView)``.
    """

    #: Seconds a client is asked to wait (``Retry-After``).
    retry_after = 1

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, DatabaseError):
            logger.warning(
                "broker_ws: %s answered 503, the database failed (%s: %s)",
                type(self).__name__,
                type(exc).__name__,
                exc,
            )
            response = HttpResponse(UNAVAILABLE_BODY, status=503, content_type="application/json")
            response["Retry-After"] = str(self.retry_after)
            return response
        return super().handle_exception(exc)  # type: ignore[misc]


class AccountSnapshotView(ServiceUnavailableOnDatabaseError, APIView):
    """``GET``: the caller's current balances, open trades and active alerts as stream
    frames, and the last live state of each login (``"state"``, docs/protocol.md).

    Authenticated like the host's other API views (a simplejwt access token
    in the demo). ``?login=1001`` narrows it to one of the caller's logins;
    another login is answered 404, exactly as one that does not exist. A database
    failure is 503 (:class:`ServiceUnavailableOnDatabaseError`).
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
        body = encode_snapshot(seqs, frames, last_states(logins))
        return HttpResponse(body, content_type="application/json")


def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in Prometheus text format, and the deployment's presence
    (``broker_ws_presence_*``, read from the bus: the same from every process).

    Unprotected by itself: mount it behind whatever guards the host's other
    operational endpoints (the demo allows loopback and staff users).
    """
    body = generate_latest() + generate_latest(metrics.PRESENCE)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


class RevocationAwareTokenRefreshSerializer(TokenRefreshSerializer):
    """simplejwt's refresh, refusing refresh tokens issued before a revocation.

    simplejwt gives the new access token a fresh ``iat``, so without this a
    revoked user holding a refresh token could mint access tokens the stream
    would accept.
    """

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        try:
            refresh = self.token_class(attrs["refresh"])
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        issued = refresh.payload.get("iat")
        claimed = refresh.payload.get(jwt_settings.USER_ID_CLAIM)
        if issued is not None and claimed is not None:
            user = (
                get_user_model()
                ._default_manager.filter(**{jwt_settings.USER_ID_FIELD: claimed})
                .first()
            )
            if user is not None and is_revoked(user, int(issued)):
                raise InvalidToken("token was revoked")
        return super().validate(attrs)


class TokenRefreshView(ServiceUnavailableOnDatabaseError, BaseTokenRefreshView):
    """``POST {"refresh": ...}``: simplejwt's refresh endpoint, aware of revocations.

    Mount it in place of simplejwt's ``TokenRefreshView``. A database failure is
    503 (:class:`ServiceUnavailableOnDatabaseError`).
    """

    serializer_class = RevocationAwareTokenRefreshSerializer
