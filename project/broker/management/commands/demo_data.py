"""Seed demo users, accounts, balances, trades and alerts; safe to rerun."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.urls import reverse

from project.broker.models import Account, Balance, PriceAlert, Trade


@dataclass(frozen=True)
class DemoTrade:
    ticket: int
    symbol: str
    side: str
    volume: str
    open_price: str


@dataclass(frozen=True)
class DemoAccount:
    login: str
    name: str
    balance: str
    trades: tuple[DemoTrade, ...]
    alert: tuple[str, str, str]  # symbol, condition, price


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    staff: bool
    accounts: tuple[DemoAccount, ...]


# Fixed tickets and logins make reruns update the same rows instead of adding new ones.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        "admin",
        "admin",
        True,
        (
            DemoAccount(
                "9001",
                "Admin house account",
                "100000.00",
                (DemoTrade(900101, "US 500", "buy", "1.00", "5200.500000"),),
                ("US 500", "above", "5300.000000"),
            ),
        ),
    ),
    DemoUser(
        "alice",
        "alice-demo-pass",
        False,
        (
            DemoAccount(
                "1001",
                "Alice main",
                "10000.00",
                (
                    DemoTrade(100101, "EURUSD", "buy", "0.50", "1.085000"),
                    DemoTrade(100102, "BTCUSD", "sell", "0.10", "64000.000000"),
                ),
                ("EURUSD", "above", "1.100000"),
            ),
            DemoAccount(
                "1002",
                "Alice swing",
                "10000.00",
                (DemoTrade(100201, "US 500", "buy", "0.20", "5180.250000"),),
                ("BTCUSD", "below", "60000.000000"),
            ),
        ),
    ),
    DemoUser(
        "bob",
        "bob-demo-pass",
        False,
        (
            DemoAccount(
                "2001",
                "Bob",
                "10000.00",
                (
                    DemoTrade(200101, "BTCUSD", "buy", "0.05", "63500.000000"),
                    DemoTrade(200102, "EURUSD", "sell", "1.00", "1.090000"),
                ),
                ("US 500", "below", "5000.000000"),
            ),
        ),
    ),
)


class Command(BaseCommand):
    help = "Create (or reset) the demo users, accounts, balances, trades and price alerts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--quiet", action="store_true", help="Print nothing, not even the credentials."
        )
        parser.add_argument(
            "--base-url",
            default="http://localhost:8000",
            help="Origin used when printing the admin URL (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        quiet = options["quiet"] or options["verbosity"] == 0
        with transaction.atomic():
            for demo_user in DEMO_USERS:
                self._seed_user(demo_user, quiet=quiet)
        if not quiet:
            self._print_credentials(options["base_url"].rstrip("/"))

    def _seed_user(self, demo: DemoUser, *, quiet: bool) -> None:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=demo.username, defaults={"email": f"{demo.username}@example.com"}
        )
        user.is_active = True
        user.is_staff = demo.staff
        user.is_superuser = demo.staff
        # Reset every run so the printed credentials are always the working ones.
        user.set_password(demo.password)
        user.save()
        if not quiet:
            self.stdout.write(f"{'Created' if created else 'Updated'} user {demo.username}")

        for demo_account in demo.accounts:
            account, _ = Account.objects.update_or_create(
                login=demo_account.login,
                defaults={"user": user, "name": demo_account.name, "currency": "USD"},
            )
            amount = Decimal(demo_account.balance)
            Balance.objects.update_or_create(
                account=account,
                defaults={
                    "currency": "USD",
                    "balance": amount,
                    "equity": amount,
                    "margin": Decimal("0.00"),
                    "free_margin": amount,
                },
            )
            for trade in demo_account.trades:
                Trade.objects.update_or_create(
                    ticket=trade.ticket,
                    defaults={
                        "account": account,
                        "symbol": trade.symbol,
                        "side": trade.side,
                        "volume": Decimal(trade.volume),
                        "open_price": Decimal(trade.open_price),
                        "close_price": None,
                        "profit": Decimal("0.00"),
                        "status": Trade.Status.OPEN,
                    },
                )
            symbol, condition, price = demo_account.alert
            # Not update_or_create: admin users may add look-alike alerts, which must not
            # make a rerun fail with MultipleObjectsReturned.
            alert = (
                PriceAlert.objects.filter(account=account, symbol=symbol, condition=condition)
                .order_by("id")
                .first()
            ) or PriceAlert(account=account, symbol=symbol, condition=condition)
            alert.price = Decimal(price)
            alert.status = PriceAlert.Status.ACTIVE
            alert.triggered_at = None
            alert.save()
            if not quiet:
                self.stdout.write(
                    f"  account {account.login}: balance {amount} USD, "
                    f"{len(demo_account.trades)} open trade(s), 1 active alert"
                )

    def _print_credentials(self, base_url: str) -> None:
        lines = [
            "",
            "=" * 60,
            "broker_ws demo data ready",
            f"Admin:        {base_url}{reverse('admin:index')}",
            f"JWT token:    POST {base_url}{reverse('token_obtain_pair')}",
            f"WebSocket:    {base_url.replace('http', 'ws', 1)}/",
            "",
            f"{'username':<10} {'password':<18} {'staff':<6} logins",
        ]
        for demo in DEMO_USERS:
            logins = ", ".join(a.login for a in demo.accounts)
            staff = "yes" if demo.staff else "no"
            lines.append(f"{demo.username:<10} {demo.password:<18} {staff:<6} {logins}")
        lines.append("=" * 60)
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
