"""The host shapes docs/guide.md §4.1 and §5.2 describe, as the two real backends had them.

* An ASGI router that already wraps its own WebSocket routes in
  ``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([...])))``.
* simplejwt's refresh view already mounted, kept rather than replaced.

SQLite with several writing processes (§15.1) is measured by tests/sqlite_writers.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import path, re_path
from rest_framework.test import APIRequestFactory
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.serializers import TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenRefreshView

import broker_ws
from broker_ws.routing import websocket_application
from broker_ws.testing import StreamClient
from broker_ws.views import RevocationAwareTokenRefreshSerializer
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)

APP_ORIGIN = (b"origin", b"https://app.example-exchange.com")
FOREIGN_ORIGIN = (b"origin", b"https://evil.example.net")
HOSTS = ["exchange.example-exchange.com", "app.example-exchange.com"]


class OrdersConsumer(AsyncJsonWebsocketConsumer):
    """The host's own consumer: says who AuthMiddlewareStack found."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"orders": [], "user": str(self.scope["user"])})


def host_routes() -> list[Any]:
    return [path("ws/orders/", OrdersConsumer.as_asgi())]


def stream_beside_host_stack() -> Any:
    """§4.1: broker_ws at "/" outside the host's validator, the host's stack unchanged."""
    host_websocket = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(host_routes())))
    return URLRouter(
        [
            path("", websocket_application()),
            re_path(r"", host_websocket),
            re_path(r"", websocket_application()),  # unknown paths: refused (403)
        ]
    )


def stream_inside_host_stack() -> Any:
    """What §4.1 advises against: broker_ws added to the host's own route list."""
    routes = [*host_routes(), path("", websocket_application())]
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routes)))


async def connects(app: Any, url: str, *headers: tuple[bytes, bytes]) -> bool:
    communicator = WebsocketCommunicator(app, url, headers=list(headers))
    connected, _ = await communicator.connect(timeout=5)
    if connected:
        await communicator.disconnect()
    return bool(connected)


@pytest.fixture
def shape_settings() -> Any:
    with override_settings(
        ALLOWED_HOSTS=HOSTS,
        BROKER_WS=broker_ws_settings(ALLOWED_ORIGINS=["app.example-exchange.com"]),
    ):
        yield


async def test_stream_beside_the_host_stack_accepts_a_client_without_origin(
    shape_settings: None, make_user: Any
) -> None:
    """A bot or trading app (no Origin) reaches broker_ws at "/" and is authorized."""
    alice = await make_user("alice", ["1001"])
    async with StreamClient(app=stream_beside_host_stack()) as client:
        data = await client.authorize(alice.token)
    assert data["logins"] == ["1001"]


async def test_stream_beside_the_host_stack_checks_browser_origins_itself(
    shape_settings: None,
) -> None:
    """At "/", ALLOWED_ORIGINS decides: the app's Origin passes, a foreign one gets 403."""
    app = stream_beside_host_stack()
    assert await connects(app, "/", APP_ORIGIN)
    assert not await connects(app, "/", FOREIGN_ORIGIN)


async def test_host_routes_keep_their_validator_and_auth_stack(shape_settings: None) -> None:
    """ws/orders/ is still guarded by AllowedHostsOriginValidator and gets scope["user"]."""
    app = stream_beside_host_stack()
    communicator = WebsocketCommunicator(app, "/ws/orders/", headers=[APP_ORIGIN])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert await communicator.receive_json_from(timeout=5) == {
        "orders": [],
        "user": "AnonymousUser",
    }
    await communicator.disconnect()
    assert not await connects(app, "/ws/orders/")  # no Origin: the host's validator refuses
    assert not await connects(app, "/ws/orders/", FOREIGN_ORIGIN)


async def test_unknown_path_beside_the_host_stack_is_refused(shape_settings: None) -> None:
    """A path neither router knows is refused (403), whether the host's validator or the
    last catch-all refuses it; without that catch-all, URLRouter raises ValueError."""
    app = stream_beside_host_stack()
    assert not await connects(app, "/ws/unknown/")
    assert not await connects(app, "/ws/unknown/", APP_ORIGIN)


async def test_stream_inside_the_host_validator_refuses_clients_without_origin(
    shape_settings: None,
) -> None:
    """Inside AllowedHostsOriginValidator, bots and trading apps (no Origin) are refused."""
    app = stream_inside_host_stack()
    assert not await connects(app, "/")
    assert await connects(app, "/", APP_ORIGIN)  # browsers from ALLOWED_HOSTS still pass


# --- a host that keeps simplejwt's refresh view ----------------------------------------


class HostRefreshSerializer(TokenRefreshSerializer):
    """A host's own refresh serializer, made revocation-aware as §5.2 shows."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        try:
            refresh = RefreshToken(attrs["refresh"])
        except Exception as exc:  # TokenError: let simplejwt word the 401
            raise InvalidToken(str(exc)) from exc
        claimed = {jwt_settings.USER_ID_FIELD: refresh[jwt_settings.USER_ID_CLAIM]}
        user = get_user_model()._default_manager.filter(**claimed).first()
        if user is not None and broker_ws.is_revoked(user, refresh["iat"]):
            raise InvalidToken("token was revoked")
        return super().validate(attrs)


def refresh_status(view: Any, token: str) -> int:
    request = APIRequestFactory().post("/api/token/refresh/", {"refresh": token}, format="json")
    return int(view(request).status_code)


@pytest.mark.parametrize(
    "serializer", [RevocationAwareTokenRefreshSerializer, HostRefreshSerializer]
)
def test_kept_simplejwt_refresh_view_refuses_a_revoked_refresh_token(serializer: Any) -> None:
    """simplejwt's view with a revocation-aware serializer: 200 before, 401 after revoking."""
    user = get_user_model().objects.create_user("bob")
    token = str(RefreshToken.for_user(user))
    view = TokenRefreshView.as_view(serializer_class=serializer)
    assert refresh_status(view, token) == 200
    broker_ws.revoke_user(user)
    assert refresh_status(view, token) == 401


def test_plain_simplejwt_refresh_view_ignores_revocations() -> None:
    """Why §5.2 exists: simplejwt's own serializer mints a token after a revocation."""
    user = get_user_model().objects.create_user("carol")
    token = str(RefreshToken.for_user(user))
    broker_ws.revoke_user(user)
    assert refresh_status(TokenRefreshView.as_view(), token) == 200
