"""Admin actions a host adds to its own user or account admin.

For a user admin (each row is a user)::

    from django.contrib.auth.admin import UserAdmin
    from broker_ws.admin_actions import revoke_stream_access, send_notification

    class StreamUserAdmin(UserAdmin):
        actions = [revoke_stream_access, send_notification]

For an account admin (each row has a user and a login), the factories take accessors::

    actions = [
        revoke_stream_access_action(user_of=lambda account: account.user_id),
        send_notification_action(login_of=lambda account: account.login),
    ]

Both actions need the change permission on the model of the admin they are in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from broker_ws.auth.tokens import get_login_resolver
from broker_ws.publish.api import notify
from broker_ws.publish.revocation import revoke_user

__all__ = [
    "NotificationForm",
    "revoke_stream_access",
    "revoke_stream_access_action",
    "send_notification",
    "send_notification_action",
]

Action = Callable[[admin.ModelAdmin, HttpRequest, QuerySet[Any]], Any]

#: The field of the form page that says the form was filled in.
CONFIRM = "broker_ws_send"
LEVELS = [("info", "info"), ("warning", "warning"), ("error", "error")]


def revoke_stream_access_action(
    user_of: Callable[[Any], Any] | None = None,
    *,
    name: str = "revoke_stream_access",
    description: str = "Revoke stream access (close sessions everywhere, 4004)",
) -> Action:
    """An action that revokes the stream access of each selected row's user.

    Every session of those users, on every server process, closes with 4004, and
    their tokens issued until now are refused (:func:`broker_ws.revoke_user`); a new
    login gets a token that works again (deactivate the user to keep it out).

    Args:
        user_of: the user of a row, or its primary key; the row itself by default
            (a user admin).
        name: the action's name, unique within one admin.
        description: the label in the actions menu.
    """

    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        users = {}
        for obj in queryset:
            user = obj if user_of is None else user_of(obj)
            if user is not None:
                users[str(getattr(user, "pk", user))] = user
        with transaction.atomic(using=queryset.db):
            for user in users.values():
                revoke_user(user, using=queryset.db)
        modeladmin.message_user(
            request,
            f"Stream access revoked for {len(users)} user{'s' if len(users) != 1 else ''}: "
            "their sessions close (4004) and their current tokens are refused.",
            messages.SUCCESS,
        )

    action.__name__ = name
    return admin.action(description=description, permissions=["change"])(action)


class NotificationForm(forms.Form):
    """The notification an operator sends: its text and level."""

    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000)
    level = forms.ChoiceField(choices=LEVELS, initial="info")


def _logins_of_user(user: Any) -> list[str]:
    return [str(login) for login in get_login_resolver()(user)]


def send_notification_action(
    login_of: Callable[[Any], str | Iterable[str] | None] | None = None,
    *,
    name: str = "send_notification",
    description: str = "Send a stream notification",
) -> Action:
    """An action that asks for a text and a level, then sends that notification
    (:func:`broker_ws.notify`) to each login of the selected rows, once per login.

    Args:
        login_of: a row's login (or its logins); by default the row is a user and its
            logins are the ``LOGIN_RESOLVER``'s.
        name: the action's name, unique within one admin.
        description: the label in the actions menu.
    """

    def logins_of(obj: Model) -> list[str]:
        if login_of is None:
            return _logins_of_user(obj)
        found = login_of(obj)
        if found is None:
            return []
        if isinstance(found, str):
            return [found]
        return [str(login) for login in found]

    def action(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
    ) -> TemplateResponse | None:
        logins = sorted({login for obj in queryset for login in logins_of(obj)})
        form = NotificationForm(request.POST if CONFIRM in request.POST else None)
        if form.is_valid():
            text, level = form.cleaned_data["text"], form.cleaned_data["level"]
            with transaction.atomic(using=queryset.db):
                for login in logins:
                    notify(text, level, login=login, using=queryset.db)
            modeladmin.message_user(
                request,
                f"Notification sent to {len(logins)} login{'s' if len(logins) != 1 else ''}.",
                messages.SUCCESS if logins else messages.WARNING,
            )
            return None  # back to the list
        opts = modeladmin.model._meta
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": description,
            "opts": opts,
            "form": form,
            "queryset": queryset,
            "logins": logins,
            "action_name": name,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "confirm_name": CONFIRM,
        }
        return TemplateResponse(request, "admin/broker_ws/send_notification.html", context)

    action.__name__ = name
    return admin.action(description=description, permissions=["change"])(action)


#: For a user admin: revoke the selected users' stream access.
revoke_stream_access = revoke_stream_access_action()
#: For a user admin: send a notification to the selected users' logins.
send_notification = send_notification_action()
