import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

# Imported only after Django is set up; the split keeps isort happy whether or not broker_ws
# is detected as first-party.
from channels.routing import ProtocolTypeRouter  # noqa: E402

# isort: split
from broker_ws.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})

# Everything loaded so far lives as long as the process: keep the garbage collector off it
# (docs/deployment.md, "gc.freeze()"). Every server imports this module before serving:
# rundemo's, and daphne or uvicorn started on their own.
gc.collect()
gc.freeze()
