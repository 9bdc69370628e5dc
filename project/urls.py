"""URL routes for the demo; WebSocket upgrades on "/" never reach these (see asgi.py)."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView

from broker_ws.views import (
    AccountSnapshotView,
    ServiceUnavailableOnDatabaseError,
    TokenRefreshView,
    metrics_view,
)
from project.broker.views import index, operators_only


class TokenObtainView(ServiceUnavailableOnDatabaseError, TokenObtainPairView):
    """simplejwt's login, answering 503 rather than 500 while the database fails."""


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/token/", TokenObtainView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/snapshot/", AccountSnapshotView.as_view(), name="account_snapshot"),
    path("metrics", operators_only(metrics_view), name="metrics"),
    path("", index, name="index"),
]

# The admin's CSS and JS under daphne and uvicorn too, which unlike runserver serve no
# static files: DEBUG only (an empty list otherwise), as for runserver.
urlpatterns += staticfiles_urlpatterns()
