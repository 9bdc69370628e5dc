"""Admin for the demo broker: editing rows here is the easiest way to see broker_ws push."""

from django.contrib import admin

from .models import Account, Balance, PriceAlert, Trade


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
