"""Minimal trading-account models: just enough state for broker_ws to stream."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Account(models.Model):
    """A trading account; its `login` is the key broker_ws routes updates by."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="accounts",
        verbose_name="user",
    )
    login = models.CharField("login", max_length=32, unique=True)
    name = models.CharField("name", max_length=100, blank=True)
    currency = models.CharField("currency", max_length=3, default="USD")
    updated_at = models.DateTimeField("updated at", auto_now=True)

    class Meta:
        ordering = ["login"]
        verbose_name = "account"
        verbose_name_plural = "accounts"

    def __str__(self) -> str:
        return f"{self.login} ({self.name})" if self.name else self.login


class Balance(models.Model):
    account = models.OneToOneField(
        Account, on_delete=models.CASCADE, related_name="balance", verbose_name="account"
    )
    currency = models.CharField("currency", max_length=3, default="USD")
    balance = models.DecimalField("balance", max_digits=18, decimal_places=2, default=0)
    equity = models.DecimalField("equity", max_digits=18, decimal_places=2, default=0)
    margin = models.DecimalField("margin", max_digits=18, decimal_places=2, default=0)
    free_margin = models.DecimalField("free margin", max_digits=18, decimal_places=2, default=0)
    updated_at = models.DateTimeField("updated at", auto_now=True)

    class Meta:
        ordering = ["account__login"]
        verbose_name = "balance"
        verbose_name_plural = "balances"

    def __str__(self) -> str:
        return f"{self.account.login}: {self.balance} {self.currency}"


class Trade(models.Model):
    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="trades", verbose_name="account"
    )
    ticket = models.PositiveBigIntegerField("ticket", unique=True)
    symbol = models.CharField("symbol", max_length=64)
    side = models.CharField("side", max_length=4, choices=Side.choices)
    volume = models.DecimalField("volume", max_digits=12, decimal_places=2)
    open_price = models.DecimalField("open price", max_digits=18, decimal_places=6)
    close_price = models.DecimalField(
        "close price", max_digits=18, decimal_places=6, null=True, blank=True
    )
    profit = models.DecimalField("profit", max_digits=18, decimal_places=2, default=0)
    status = models.CharField("status", max_length=6, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField("opened at", default=timezone.now)
    updated_at = models.DateTimeField("updated at", auto_now=True)

    class Meta:
        ordering = ["-opened_at", "-ticket"]
        verbose_name = "trade"
        verbose_name_plural = "trades"

    def __str__(self) -> str:
        return f"#{self.ticket} {self.side} {self.volume} {self.symbol}"


class PriceAlert(models.Model):
    class Condition(models.TextChoices):
        ABOVE = "above", "Above"
        BELOW = "below", "Below"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        TRIGGERED = "triggered", "Triggered"
        CANCELLED = "cancelled", "Cancelled"

    account = models.ForeignKey(
        Account, on_delete=models.CASCADE, related_name="price_alerts", verbose_name="account"
    )
    symbol = models.CharField("symbol", max_length=64)
    condition = models.CharField("condition", max_length=5, choices=Condition.choices)
    price = models.DecimalField("price", max_digits=18, decimal_places=6)
    status = models.CharField("status", max_length=9, choices=Status.choices, default=Status.ACTIVE)
    triggered_at = models.DateTimeField("triggered at", null=True, blank=True)
    created_at = models.DateTimeField("created at", auto_now_add=True)
    updated_at = models.DateTimeField("updated at", auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "price alert"
        verbose_name_plural = "price alerts"

    def __str__(self) -> str:
        return f"{self.symbol} {self.condition} {self.price}"
