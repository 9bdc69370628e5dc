"""App configuration: registers the system checks and the model bindings."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class BrokerWsConfig(AppConfig):
    """broker_ws's AppConfig."""

    name = "broker_ws"
    verbose_name = "broker_ws"

    def ready(self) -> None:
        from broker_ws.bindings import bind_from_settings
        from broker_ws.checks import check_settings
        from broker_ws.conf import conf

        checks.register(check_settings)
        bind_from_settings(conf.BINDINGS)
