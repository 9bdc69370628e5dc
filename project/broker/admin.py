"""Admin for the demo broker: editing rows here is the easiest way to see broker_ws push.

The user and account admins carry broker_ws's operator actions (revoke stream access,
send a notification); broker_ws's own read-only pages and presence come with the app.
"""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from broker_ws.admin_actions import (
    revoke_stream_access,
    revoke_stream_access_action,
    send_notification,
    send_notification_action,
)

from .models import Account, Balance, PriceAlert, Trade

User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class StreamUserAdmin(UserAdmin):
    actions = [revoke_stream_access, send_notification]


class BalanceInline(admin.StackedInline):
    model = Balance
    can_delete = False
    extra = 0


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["login", "name", "user", "currency", "updated_at"]
    list_filter = ["currency"]
    search_fields = ["login", "name", "user__username"]
    list_select_related = ["user"]
    inlines = [BalanceInline]
    actions = [
        revoke_stream_access_action(
            user_of=lambda account: account.user_id,
            description="Revoke the stream access of the accounts' users",
        ),
        send_notification_action(login_of=lambda account: account.login),
    ]


@admin.register(Balance)
class BalanceAdmin(admin.ModelAdmin):
    list_display = [
        "account",
        "currency",
        "balance",
        "equity",
        "margin",
        "free_margin",
        "updated_at",
    ]
    list_editable = ["balance", "equity"]
    list_filter = ["currency"]
    search_fields = ["account__login"]
    list_select_related = ["account"]


@admin.register(Trade)
class TradeAdmin(admin.ModelAdmin):
    list_display = [
        "ticket",
        "account",
        "symbol",
        "side",
        "volume",
        "open_price",
        "close_price",
        "profit",
        "status",
        "updated_at",
    ]
    list_filter = ["status", "side", "symbol"]
    search_fields = ["account__login", "symbol", "ticket"]
    list_select_related = ["account"]


@admin.register(PriceAlert)
class PriceAlertAdmin(admin.ModelAdmin):
    list_display = ["id", "account", "symbol", "condition", "price", "status", "updated_at"]
    list_filter = ["status", "condition", "symbol"]
    search_fields = ["account__login", "symbol"]
    list_select_related = ["account"]
