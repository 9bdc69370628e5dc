"""App configuration: checks, model bindings, and revocation when a user is deactivated."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db.models.signals import post_save


class BrokerWsConfig(AppConfig):
    """broker_ws's AppConfig."""

    name = "broker_ws"
    verbose_name = "broker_ws"

    def ready(self) -> None:
        from broker_ws.checks import check_server_versions, check_settings
        from broker_ws.conf import conf
        from broker_ws.publish.bindings import bind_from_settings
        from broker_ws.publish.revocation import revoke_deactivated
        from broker_ws.wire import channel_names

        channel_names.prefix = _key_prefix
        checks.register(check_settings)
        checks.register(check_server_versions)
        bind_from_settings(conf.BINDINGS)
        post_save.connect(
            revoke_deactivated,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="broker_ws:revoke_deactivated",
        )


def _key_prefix() -> str:
    from broker_ws.conf import conf

    return conf.KEY_PREFIX
