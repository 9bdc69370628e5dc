from django.apps import AppConfig


class BrokerConfig(AppConfig):
    # The short label keeps BROKER_WS model references ("broker.Balance") readable.
    name = "project.broker"
    label = "broker"
    verbose_name = "Demo broker"
    default_auto_field = "django.db.models.BigAutoField"
