"""Django settings for Baton.

Two deployments are first-class: the embedded default (SQLite file + django-q2 ORM broker +
in-memory channel layer) and the scale-out one (PostgreSQL + Redis), chosen by DATABASE_URL and
REDIS_URL. See orchestration/config/env.py for how bad values are reported.
"""

from __future__ import annotations

from pathlib import Path

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS

from orchestration.config.env import (
    allowed_hosts_from_env,
    database_from_env,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_str,
    proxy_ssl_header_from_env,
    redis_url_from_env,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# Lets the admin write `admin.ModelAdmin[Run]` and `forms.ModelForm[Agent]`: Django's generic
# classes get a no-op __class_getitem__ (their type arguments are for mypy only).
django_stubs_ext.monkeypatch()

# One switch for a deployment reached over HTTPS: it refuses to start without a secret key and
# named hosts, and turns on secure cookies and HSTS (see "Production" below).
PRODUCTION = env_bool("BATON_PRODUCTION", False)
DEBUG = env_bool("BATON_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("BATON_DEBUG must be off when BATON_PRODUCTION is on.")
SECRET_KEY = env_str("BATON_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("BATON_SECRET_KEY must be set when BATON_PRODUCTION is on.")
    # Development and tests only; the production switch above refuses to start without one.
    SECRET_KEY = "baton-development-key-not-for-production"

ALLOWED_HOSTS = allowed_hosts_from_env(production=PRODUCTION)
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in env_str("BATON_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    # For its bundled Swagger UI (templates and static files): the /api/docs page.
    "ninja",
    "django_q",
    "channels",
    "orchestration",
    "orchestration.rollouts",
    "orchestration.triggers",
    "approvals",
    # After triggers and approvals: their ticker passes (due schedules fired, deadlines acted
    # on) run before the alerts pass in each tick, so it judges what they left.
    "orchestration.alerts",
    "dashboard",
]

MIDDLEWARE = [
    # Outermost, so every response gets the policy, redirects and error pages included.
    "orchestration.config.csp.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Before any middleware's view hook reads the body (the CSRF check does).
    "orchestration.config.middleware.RequestSizeLimitMiddleware",
    "orchestration.config.middleware.MethodNotAllowedPageMiddleware",
]

ROOT_URLCONF = "orchestration.config.urls"
ASGI_APPLICATION = "orchestration.config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.context_processors.inbox",
                "dashboard.context_processors.live",
                "dashboard.context_processors.alerts",
            ],
        },
    },
]

DATABASES = {"default": database_from_env(BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url_from_env()

# The queue name doubles as the Redis list key / ORM broker key, so tests and benches can use
# their own queue without disturbing a running `make run`.
QUEUE_NAME = env_str("BATON_QUEUE", "baton")
WORKERS = env_int("BATON_WORKERS", 2, minimum=1)

Q_CLUSTER: dict[str, object] = {
    "name": QUEUE_NAME,
    "workers": WORKERS,
    # Our own tables hold every step's state; django-q2 is only the delivery mechanism, so a
    # successful task leaves no row behind (our StepRun/Attempt rows are the history).
    "save_limit": -1,
    "ack_failures": True,
    "max_attempts": 1,
    # A task may run as long as the longest step timeout; the lease/heartbeat in
    # orchestration.tasks is what detects a dead worker, not this timer.
    "timeout": env_int("BATON_MAX_STEP_SECONDS", 3600, minimum=1),
    "retry": env_int("BATON_MAX_STEP_SECONDS", 3600, minimum=1) + 60,
    "catch_up": False,
    # django-q2 replaces a worker process after this many tasks (its default, 500, is a few
    # seconds of work for a process whose slots hold 100 calls, and each replacement waits
    # for the calls in its slots: docs/concurrency.md).
    "recycle": env_int("BATON_RECYCLE_TASKS", 1_000_000, minimum=1),
    "poll": env_float("BATON_BROKER_POLL", 0.02, minimum=0.001),
    "guard_cycle": 0.5,
    "label": "Task queue",
    "log_level": env_str("BATON_Q_LOG_LEVEL", "WARNING"),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# The live push (dashboard/live, docs/live-push.md). With Redis, every process publishes its
# committed changes through the channel layer and each web process hears them on pub/sub; the
# embedded set-up has no shared layer, so each web process tails the event log instead. A group
# message is a hint (a group name, no data); capacity and expiry bound what a slow consumer can
# hold in memory.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{QUEUE_NAME}:live"},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 200, "expiry": 30}}
    }
BATON_LIVE_SOURCE = "publish" if REDIS_URL else "tail"
# How often a web process reads the event log for new changes in the embedded set-up.
BATON_LIVE_TAIL_SECONDS = env_float("BATON_LIVE_TAIL_SECONDS", 0.1, minimum=0.01)
# At most one push per socket in this long; the first change after a quiet spell goes at once.
BATON_LIVE_COALESCE_SECONDS = env_float("BATON_LIVE_COALESCE_SECONDS", 0.25, minimum=0.0)
# How often a page refreshes its live parts while its socket is down (0: never).
BATON_LIVE_POLL_SECONDS = env_float("BATON_LIVE_POLL_SECONDS", 5.0, minimum=0.0)
# Requests inside Django at once per web process (each is a thread and a database connection);
# the rest wait their turn (orchestration/config/concurrency.py).
BATON_WEB_CONCURRENCY = env_int("BATON_WEB_CONCURRENCY", 8, minimum=1)
# A pool of PostgreSQL connections shared by the process's threads. The web process turns it on
# (orchestration/config/asgi.py): Django runs each request in a thread of its own, so without a
# pool every page fetch opens a connection (a third of a live refresh's time). Workers keep one
# persistent connection each and need none: django-q2 forks them, and a pool must not cross a fork.
BATON_DB_POOL = env_bool("BATON_DB_POOL", False)
if BATON_DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django refuses both at once
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        # The requests inside Django, plus the live push's publisher and a little room.
        "min_size": 2,
        "max_size": BATON_WEB_CONCURRENCY + 4,
        "timeout": 10,
    }

# Engine timings. Heartbeat/lease decide how fast a killed worker's step is retried; the tick
# is how often the ticker looks for due retries, expired leases and lost messages.
BATON_HEARTBEAT_SECONDS = env_float("BATON_HEARTBEAT_SECONDS", 5.0, minimum=0.05)
BATON_LEASE_SECONDS = env_float("BATON_LEASE_SECONDS", 20.0, minimum=0.1)
BATON_TICK_SECONDS = env_float("BATON_TICK_SECONDS", 0.5, minimum=0.01)
BATON_REQUEUE_AFTER_SECONDS = env_float("BATON_REQUEUE_AFTER_SECONDS", 60.0, minimum=0.1)
# /metrics answers only `Authorization: Bearer <this>`; unset, /metrics is a 404
# (orchestration/observability/views.py). /healthz calls the ticker failing when its last whole
# pass is older than BATON_HEALTH_TICKER_SECONDS.
BATON_METRICS_TOKEN = env_str("BATON_METRICS_TOKEN", "")
BATON_HEALTH_TICKER_SECONDS = env_float("BATON_HEALTH_TICKER_SECONDS", 60.0, minimum=1.0)
# Rollout metrics: the ticker refreshes the daily snapshots (and checks each rollout's gate
# once a day) at most this often.
BATON_ROLLUP_SECONDS = env_float("BATON_ROLLUP_SECONDS", 300.0, minimum=0.0)
# Alerts (docs/alerts.md): the ticker evaluates every rule at most this often; a delivery is
# tried this many times (with backoff) before it is given up; a webhook has this long to answer.
BATON_ALERT_SECONDS = env_float("BATON_ALERT_SECONDS", 15.0, minimum=0.0)
BATON_ALERT_DELIVERY_ATTEMPTS = env_int("BATON_ALERT_DELIVERY_ATTEMPTS", 5, minimum=1)
BATON_ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("BATON_ALERT_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Webhook triggers (docs/triggers.md): how far a delivery's X-Baton-Timestamp may be from the
# server's clock, how long an accepted signature is remembered (the same body signed the same
# way is a replay for that long), and the largest body read.
BATON_WEBHOOK_TOLERANCE_SECONDS = env_int("BATON_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1)
BATON_WEBHOOK_REPLAY_SECONDS = env_int("BATON_WEBHOOK_REPLAY_SECONDS", 86400, minimum=300)
BATON_WEBHOOK_MAX_BYTES = env_int("BATON_WEBHOOK_MAX_BYTES", 262144, minimum=1024)
# An event nobody waits for yet is kept this long for the first step that comes to wait for it.
BATON_EVENT_KEEP_SECONDS = env_int("BATON_EVENT_KEEP_SECONDS", 7 * 86400, minimum=0)
# How long one worker task may go on running the next steps of a sequence itself (0: never).
BATON_CONTINUE_SECONDS = env_float("BATON_CONTINUE_SECONDS", 30.0, minimum=0.0)
# On SIGTERM a worker takes no new step and has this long to finish the ones in hand; what is
# still running then is released to other workers and its processes are killed.
BATON_DRAIN_SECONDS = env_float("BATON_DRAIN_SECONDS", 20.0, minimum=0.0)
# Agent calls that wait on the network (http, llm, async def python agents) each worker process
# runs at once, on an event loop (orchestration/slots.py, docs/concurrency.md); 1: one step at a
# time, in the worker's thread, as synchronous agents always run.
BATON_SLOTS = env_int("BATON_SLOTS", 100, minimum=1)
# How long a worker's task waits for a free slot before it gives the step back to the broker.
BATON_SLOT_WAIT_SECONDS = env_float("BATON_SLOT_WAIT_SECONDS", 30.0, minimum=0.0)
# Connections each outbound pool (one per checked host and address) keeps or opens at once.
BATON_OUTBOUND_POOL_CONNECTIONS = env_int("BATON_OUTBOUND_POOL_CONNECTIONS", 100, minimum=1)
# How long a worker retries recording a result while the database is unavailable.
BATON_DB_RETRY_SECONDS = env_float("BATON_DB_RETRY_SECONDS", 60.0, minimum=0.0)
# A cluster whose idle workers have not read the task queue for this long is restarted (a
# worker killed while reading it keeps the queue's lock for ever).
BATON_STUCK_SECONDS = env_float("BATON_STUCK_SECONDS", 10.0, minimum=0.5)

# Limits on what people and programs hand to Baton (docs/workflow-format.md, "Limits"): a
# run's input as JSON, items per for_each, and a request body (Django refuses bigger bodies
# before parsing them; the start form and the API answer 413 naming the limit).
BATON_MAX_INPUT_BYTES = env_int("BATON_MAX_INPUT_BYTES", 262_144, minimum=1024)
BATON_MAX_MAP_ITEMS = env_int("BATON_MAX_MAP_ITEMS", 10_000, minimum=1)
BATON_MAX_REQUEST_BYTES = env_int("BATON_MAX_REQUEST_BYTES", 1_048_576, minimum=4096)
DATA_UPLOAD_MAX_MEMORY_SIZE = BATON_MAX_REQUEST_BYTES

# Hosts http and llm agents may call: names, *.suffix, IP addresses or networks, "*" for any
# public host. Private, loopback and link-local addresses need their address listed.
BATON_HTTP_ALLOWED_HOSTS = env_str("BATON_HTTP_ALLOWED_HOSTS", "")

# What agents may use on the workers; whoever edits an agent chooses only among these (see
# orchestration/agents/registry.py and secrets.py). Python callables: `module:function`, or
# `module` for every function defined in it. Variables `${NAME}` and `api_key_env` may read:
# names or shell patterns (BATON_SECRET_KEY, DATABASE_URL and REDIS_URL never).
BATON_PYTHON_AGENTS = [
    e.strip() for e in env_str("BATON_PYTHON_AGENTS", "orchestration.bench_agents:noop").split(",") if e.strip()
]
BATON_AGENT_SECRETS = [
    e.strip() for e in env_str("BATON_AGENT_SECRETS", "BATON_SECRET_*,OPENAI_API_KEY").split(",") if e.strip()
]
# The log lines an attempt keeps (orchestration/agents/logs.py): what its agent logged and
# printed, and the http and llm kinds' request summaries. Enough for a person to follow one
# attempt on its page, small enough that a run page with hundreds of attempts stays light and
# an agent printing in a loop cannot fill the database: lines past either limit are counted,
# not kept, and a last line says how many were dropped. A longer line is cut to the line limit.
BATON_ATTEMPT_LOG_LINES = env_int("BATON_ATTEMPT_LOG_LINES", 200, minimum=1)
BATON_ATTEMPT_LOG_BYTES = env_int("BATON_ATTEMPT_LOG_BYTES", 32_768, minimum=1024)
BATON_ATTEMPT_LOG_LINE_BYTES = env_int("BATON_ATTEMPT_LOG_LINE_BYTES", 2048, minimum=128)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

EMAIL_BACKEND = env_str("BATON_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("BATON_FROM_EMAIL", "Baton <baton@localhost>")
# Where people reach this Baton: links in emails point here.
BATON_BASE_URL = env_str("BATON_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"

# --- Production (BATON_PRODUCTION) ----------------------------------------------------------
# `manage.py check --deploy` is clean with these (tests/test_settings.py runs it).
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
# A plain-HTTP request is redirected to HTTPS. Behind a proxy that terminates TLS, set
# BATON_PROXY_SSL_HEADER so Django can tell (or the redirect would loop), or turn this off
# and let the proxy redirect.
SECURE_SSL_REDIRECT = env_bool("BATON_SSL_REDIRECT", PRODUCTION)
SECURE_PROXY_SSL_HEADER = proxy_ssl_header_from_env()
# HSTS is sent on HTTPS responses only. A year, subdomains included, unless told otherwise.
SECURE_HSTS_SECONDS = env_int("BATON_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("BATON_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a promise to the browsers' built-in lists, hard to take back, and the directive
# lets anyone submit the domain: an operator opts in. Not opting in is a decision, so the check
# that asks for it is silenced unless preload is on.
SECURE_HSTS_PRELOAD = env_bool("BATON_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Every page passes it: htmx and Baton's scripts and styles are files under static/, sizes
# computed by the server travel in data- attributes (static/js/baton.js applies them), and the
# websocket is same-origin ('self' covers ws:/wss: of this host). Empty turns the header off.
BATON_CSP = env_str(
    "BATON_CSP",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
).strip()

# `plain` lines for people, or `json`: one JSON object per line for a log collector. Either way a
# line written during an attempt names its run, step, attempt and agent (orchestration/logcontext.py).
BATON_LOG_FORMAT = env_choice("BATON_LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(attempt_context)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["asctime", "levelname", "name", "message", "run_id", "step_key", "attempt", "agent"],
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # The plain format's words for the same ids: the fields above already carry them.
            "reserved_attrs": [*RESERVED_ATTRS, "attempt_context"],
        },
    },
    # Agents' secret values never reach a log line (see orchestration/agents/secrets.py); the
    # attempt's ids are added to every line (None, or "" in the plain format, outside one).
    "filters": {
        "redact_secrets": {"()": "orchestration.agents.secrets.RedactSecrets"},
        "attempt_context": {"()": "orchestration.logcontext.AttemptFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": BATON_LOG_FORMAT,
            "filters": ["redact_secrets", "attempt_context"],
        },
        # Keeps what an agent logs during an attempt with that attempt; it takes nothing away
        # from the other handlers (orchestration/agents/logs.py).
        "attempt_log": {"class": "orchestration.agents.logs.AttemptLogHandler"},
    },
    # INFO, not logging's default WARNING, so that an agent's logger.info() lines, from a logger
    # nobody configured, reach the attempt; the worker's own output is unchanged.
    "root": {"handlers": ["attempt_log"], "level": env_str("BATON_AGENT_LOG_LEVEL", "INFO")},
    "loggers": {
        "baton": {"handlers": ["console"], "level": env_str("BATON_LOG_LEVEL", "INFO")},
        "django_q": {"handlers": ["console"], "level": env_str("BATON_Q_LOG_LEVEL", "WARNING")},
    },
}
