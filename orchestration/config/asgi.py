"""ASGI entry point: HTTP through Django, websockets through Channels (login required)."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.config.settings")
# The web process shares a pool of database connections between its request threads
# (settings.BATON_DB_POOL); set BATON_DB_POOL=0 to turn it off. Asked for this process's
# settings only: a process that imports this module and then starts workers (a test) must not
# hand the pool to them, since a pool may not cross django-q2's fork.
_asked_for_pool = "BATON_DB_POOL" not in os.environ
if _asked_for_pool:
    os.environ["BATON_DB_POOL"] = "1"

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi = get_asgi_application()
if _asked_for_pool:
    del os.environ["BATON_DB_POOL"]

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from orchestration.config.concurrency import BoundedRequests  # noqa: E402
from orchestration.config.origin import SameOriginValidator  # noqa: E402

# Daphne serves static files itself in the embedded deployment so `make run` needs no
# collectstatic or separate web server; a production deployment puts a CDN or proxy in front.
# Static files are served before the bound on requests inside Django (concurrency.py).
# (It calls any ASGI application for what is not a static file; the stubs name only Django's.)
http_app = ASGIStaticFilesHandler(BoundedRequests(django_asgi))  # type: ignore[arg-type]

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # A socket rides on the user's session cookie, so a page on another site could open one:
        # the Host must be one of ALLOWED_HOSTS and the Origin our own (orchestration/config/origin.py).
        "websocket": AllowedHostsOriginValidator(
            SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# What start-up built (settings, apps, URL patterns, modules: most of the process's objects)
# lives as long as the process. Frozen, it leaves the collector's full passes, which otherwise
# walk all of it every few requests of a big page and were most of the run page's slowest
# requests (manage.py bench --only console freezes the same way before it times pages).
gc.collect()
gc.freeze()
