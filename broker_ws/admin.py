"""Read-only admin pages for broker_ws's tables, and presence, in the host's own admin.

Django's admin autodiscovery registers these on ``admin.site`` once ``broker_ws`` and
``django.contrib.admin`` are both in ``INSTALLED_APPS``. The outbox, revocations and
broadcasts are written by broker_ws alone (a row edited by hand would break the seq
order or reach no session), so these pages only show them: no add, change or delete,
whatever the user's permissions. Presence (sessions per login on every server
process, :func:`broker_ws.presence`) is a page of the login sequences' admin,
``admin:broker_ws_presence``, linked from their list and the app's index.

The actions a host adds to its own user or account admin are in
:mod:`broker_ws.admin_actions`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from broker_ws.exceptions import Unavailable
from broker_ws.models import AccountEvent, Broadcast, LoginSequence, Revocation
from broker_ws.session.presence import presence_by_process

#: Rows the presence page lists at most (the most sessions first); the totals count all.
PRESENCE_ROWS = 500
FRAME_PREVIEW = 120


def _preview(text: str) -> str:
    return text if len(text) <= FRAME_PREVIEW else text[: FRAME_PREVIEW - 1] + "…"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Lists and detail pages only: nothing can be added, changed or deleted here."""

    # Counting every row of a large outbox on each page view is slow.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AccountEvent)
class AccountEventAdmin(ReadOnlyAdmin):
    list_display = ["login", "seq", "created_at", "frame_preview"]
    list_filter = ["created_at"]
    search_fields = ["=login"]
    ordering = ["-id"]

    @admin.display(description="frame")
    def frame_preview(self, obj: AccountEvent) -> str:
        return _preview(obj.frame)


@admin.register(Revocation)
class RevocationAdmin(ReadOnlyAdmin):
    list_display = ["user_id", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["=user_id"]
    ordering = ["-id"]


@admin.register(Broadcast)
class BroadcastAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "frame_preview"]
    list_filter = ["created_at"]
    ordering = ["-id"]

    @admin.display(description="frame")
    def frame_preview(self, obj: Broadcast) -> str:
        return _preview(obj.frame)


@admin.register(LoginSequence)
class LoginSequenceAdmin(ReadOnlyAdmin):
    """The last seq of each login, and the presence page."""

    list_display = ["login", "seq"]
    search_fields = ["=login"]
    ordering = ["login"]
    change_list_template = "admin/broker_ws/loginsequence/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        presence = path(
            "presence/", self.admin_site.admin_view(self.presence_view), name="broker_ws_presence"
        )
        return [presence, *super().get_urls()]

    def presence_view(self, request: HttpRequest) -> HttpResponse:
        """Sessions per login right now, on every server process (``?q=`` one login)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        error = None
        try:
            per_process = presence_by_process()
        except Unavailable as exc:
            error = f"{exc} ({exc.__cause__})"
            per_process = {}
        total: dict[str, int] = {}
        for counts in per_process.values():
            for login, sessions in counts.items():
                total[login] = total.get(login, 0) + sessions
        query = request.GET.get("q", "").strip()
        rows = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
        if query:
            rows = [(login, n) for login, n in rows if login == query]
        context = {
            **self.admin_site.each_context(request),
            "title": "Presence",
            "opts": self.model._meta,
            "error": error,
            "query": query,
            "rows": rows[:PRESENCE_ROWS],
            "truncated": len(rows) > PRESENCE_ROWS,
            "limit": PRESENCE_ROWS,
            "logins": len(total),
            "sessions": sum(total.values()),
            "processes": sorted((name, sum(c.values())) for name, c in per_process.items()),
        }
        return TemplateResponse(request, "admin/broker_ws/presence.html", context)
