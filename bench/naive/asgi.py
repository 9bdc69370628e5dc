"""ASGI app of the ``naive`` baseline: ``daphne bench.naive.asgi:application``.

Reuses the demo's settings (DJANGO_SETTINGS_MODULE=project.settings, with
REDIS_URL set so CHANNEL_LAYERS is channels_redis' RedisChannelLayer).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from bench.naive.consumer import NaiveConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([path("", NaiveConsumer.as_asgi())]),
    }
)
