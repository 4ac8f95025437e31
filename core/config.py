"""Every setting Tutorflow reads from the environment, in one typed object.

`Settings.from_env()` is the only code that reads `os.environ`. A process builds it once
(`get_settings()`) and hands it to what it runs: `create_app(settings)`, the Celery app
(celeryconfig.py), gunicorn.conf.py and flowerconfig.py. A test builds other `Settings`
(`dataclasses.replace`) to make a second app with another database or cache.

Defaults work on a developer machine with PostgreSQL and Redis on localhost.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import urlsplit

_FALSE = ("0", "false", "no", "off", "")

# The local provider sandbox (`python -m sandbox`, the Procfile's `sandbox`) and the key
# it accepts by default: the development defaults (see `stripe_api_base_for`).
SANDBOX_SECRET_KEY = "sk_test_tutorflow_sandbox"
SANDBOX_API_BASE = "http://127.0.0.1:12111"


def stripe_api_base_for(secret_key: str, configured: str | None) -> str | None:
    """Where the stripe library sends its requests (None: api.stripe.com).

    The key decides the default, so neither kind of key can silently go to the other
    side: the sandbox's own development key (the default key) goes to the local sandbox,
    any other key to Stripe. STRIPE_API_BASE, when set, wins; it is refused only where
    it would send the development key to Stripe (which would only answer 401) or a live
    key anywhere but over HTTPS (never to a local sandbox)."""
    if configured is None:
        return SANDBOX_API_BASE if secret_key == SANDBOX_SECRET_KEY else None
    url = urlsplit(configured)
    host = url.hostname or ""
    if secret_key == SANDBOX_SECRET_KEY and (host == "stripe.com" or host.endswith(".stripe.com")):
        raise ValueError(
            f"STRIPE_API_BASE={configured}: the sandbox's development key is not a Stripe "
            "key; set STRIPE_SECRET_KEY to your Stripe key"
        )
    if secret_key.startswith(("sk_live_", "rk_live_")) and url.scheme != "https":
        raise ValueError(
            f"STRIPE_API_BASE={configured}: a live STRIPE_SECRET_KEY goes only to Stripe "
            "over HTTPS; unset STRIPE_API_BASE"
        )
    return configured


STRIPE_API = "https://api.stripe.com"


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy a request to `url` goes through, by the variables requests and curl
    read (each name in lower case first): `<scheme>_proxy`, else `all_proxy`; none
    when `no_proxy` names the host: `*`, the host itself (with its port, if the entry
    gives one), a domain it lies in (`example.com` or `.example.com`), or, for an
    address, the address or a block of them (`10.0.0.0/8`)."""

    def variable(name: str) -> str | None:
        return environ.get(name) or environ.get(name.upper()) or None

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    entries = (variable("no_proxy") or "").replace(" ", "").split(",")
    if any(entry and _names(entry, host, parts.port) for entry in entries):
        return None
    return variable(f"{parts.scheme}_proxy") or variable("all_proxy")


def _names(entry: str, host: str, port: int | None) -> bool:
    """Does this `no_proxy` entry name `host` (at `port`)?"""
    if entry == "*":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            pass  # not an address: perhaps host:port
    name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if entry_port and entry_port != str(port):
        return False
    name = name.lstrip(".").lower()
    return host == name or host.endswith(f".{name}")


def http_url(bind: str) -> str:
    """Where a browser reaches a server bound to `bind` (API_BIND's form, host:port)."""
    host, _, port = bind.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


class _Env:
    """Typed reads from one environment mapping, with the defaults beside the names."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str) -> str:
        return self.environ.get(name, default)

    def integer(self, name: str, default: int) -> int:
        raw = self.environ.get(name)
        if raw is None:
            return default
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected a whole number, like {default}") from None

    def at_least(self, name: str, default: int, least: int) -> int:
        value = self.integer(name, default)
        if value < least:
            raise ValueError(f"{name}={value}: expected a whole number of at least {least}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self.environ.get(name)
        if raw is None:
            return default
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected a number, like {default}") from None

    def optional(self, name: str) -> str | None:
        return self.environ.get(name) or None

    def items(self, name: str, default: str) -> tuple[str, ...]:
        """A comma-separated list; blanks dropped."""
        return tuple(i.strip() for i in self.environ.get(name, default).split(",") if i.strip())

    def flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        return default if raw is None else raw.strip().lower() not in _FALSE

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.environ.get(name, default).strip().lower()
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        return value


@dataclass(frozen=True)
class Settings:
    database_url: str
    # The Celery broker. BROKER_URL; REDIS_URL is read as a fallback so deployments
    # configured before the rename keep working.
    broker_url: str
    # Read models and live events (pub/sub), and the rate-limit counters: always Redis.
    cache_url: str
    # The primary's name when BROKER_URL or CACHE_URL is `sentinel://h1:26379;...`
    # (core/redis_client.py): the sentinels say where it is, also after a failover.
    redis_sentinel_master: str
    admin_token: str
    flower_basic_auth: str
    # The payment provider (Stripe). Development needs no exports: the default key is the
    # sandbox's and goes to the local sandbox (SANDBOX_API_BASE); any other key goes to
    # api.stripe.com unless STRIPE_API_BASE says otherwise (tests point it at their own
    # sandbox). Unset in production. The rule: stripe_api_base_for.
    stripe_secret_key: str
    stripe_api_base: str | None
    # What the student page's checkout gives the provider from the browser (Stripe.js's
    # publishable key): it can only confirm a PaymentIntent with its client_secret.
    stripe_publishable_key: str
    # Several while rotating: a webhook signed with any of them is accepted.
    stripe_webhook_secrets: tuple[str, ...]
    stripe_connect_timeout: float
    stripe_read_timeout: float
    # The proxy the provider's calls go through (HTTPS_PROXY, ALL_PROXY, NO_PROXY for
    # its address: proxy_for), read here once: requests would scan the environment for
    # it again on every call (core.provider).
    stripe_proxy: str | None
    # The breaker opens after this many outages in a row and probes again after the reset.
    stripe_breaker_fail_max: int
    stripe_breaker_reset_seconds: float
    # The verify step's retry countdown cap (s): 8 retries, 2·2ⁿ s up to this, about 7
    # minutes of provider outage before the dead letter. With the task time limit it must
    # stay under the broker's visibility timeout.
    provider_retry_backoff_max: int
    # Outgoing e-mail (core/mail.py): smtp://host:port (STARTTLS with ?starttls=1) or
    # smtps://host:port. The login comes from SMTP_USER / SMTP_PASSWORD (or the URL's
    # user:password); neither is ever shown (repr=False keeps them out of any log line).
    smtp_url: str = field(repr=False)
    smtp_user: str | None = field(repr=False)
    smtp_password: str | None = field(repr=False)
    # Below the worker's 15 s lock timeout: a second sender waits out the first (tasks/
    # notifications.py) and below PostgreSQL's 30 s idle-in-transaction limit.
    smtp_timeout: float
    mail_from: str
    # Students' bearer tokens (core/tokens.py): HS256 with JWT_SECRET, or RS256 with
    # JWT_PUBLIC_KEY (PEM) or JWT_JWKS_URL; audience and issuer must match.
    jwt_algorithm: str
    jwt_secret: str
    jwt_public_key: str | None
    jwt_jwks_url: str | None
    jwt_audience: str
    jwt_issuer: str
    # Stream tickets (SSE): our own short-lived tokens, signed with this secret.
    stream_ticket_secret: str
    stream_ticket_seconds: int
    # Pool per process: gunicorn workers and Celery pool children each own one.
    db_pool_size: int
    db_max_overflow: int
    # Off by default: it costs a round trip per checkout. After a database restart the
    # first use of each dead connection fails once (503 / a task retry) and the pool
    # is invalidated, which the fault tests cover.
    db_pool_pre_ping: bool
    # PostgreSQL timeouts (ms). The API's are short: a request waiting on a lock or a
    # slow query answers 503 instead of holding a gunicorn thread to its 30 s kill.
    # The workers' are longer (a top-up batch), still bounded.
    db_connect_timeout: int
    api_statement_timeout_ms: int
    api_lock_timeout_ms: int
    worker_statement_timeout_ms: int
    worker_lock_timeout_ms: int
    # A step whose database cannot be reached (a failover, a restart) retries beyond its
    # max_retries until this many seconds after its first failure: an outage of the
    # database is not the step's fault, and a failover takes ~15 s (docs/across-hosts.md).
    db_outage_retry_seconds: int
    # Browser origins allowed to call the API (CORS); empty: same origin only.
    cors_origins: tuple[str, ...]
    # Celery delivery semantics (see docs/guarantees.md).
    visibility_timeout: int
    retry_backoff: int
    retry_backoff_max: int
    task_time_limit: int
    retry_jitter: bool
    # Which task events a pipeline step sends to Flower: "all" (received, started,
    # succeeded too: every step of every payment) or "outcomes" (failed, retried,
    # rejected, revoked, and a retry's success: what an operator acts on). docs/operations.md,
    # "Flower".
    step_events: str
    # A poison message: a message whose run kills the process running it (out of memory,
    # a crash in a C library) is handed out again after each loss; after this many losses
    # it is parked as a dead letter instead (tasks/poison.py; on RabbitMQ the queues'
    # delivery limit, set by policy). At least 1.
    poison_worker_losses: int
    # RabbitMQ's management API (http://host:15672 of BROKER_URL's host by default; the
    # broker URL's user and password log in): where the dead-letter worker sets the
    # queues' delivery-limit policy. Unused on Redis.
    rabbitmq_management_url: str
    # Rolling session window.
    session_window: int
    top_up_threshold: int
    top_up_interval_seconds: float
    top_up_batch_size: int
    top_up_threads: int
    outbox_relay_interval_seconds: float
    # An outbox row younger than this is left to the API's own post-commit publish.
    outbox_relay_grace_seconds: float
    outbox_retention_days: float
    # A confirmed payment whose pipeline has not finished (and is not dead-lettered)
    # after this long is published again: it covers a chain link lost with the broker.
    pipeline_stall_seconds: float
    # A paid course with no trainer found for this long is refunded (beat).
    allocation_give_up_hours: float
    # How long a checkout's hold keeps a trainer's place for the student to pay (and,
    # from the student's "I paid", for the provider's word to arrive).
    hold_minutes: float
    # How long GET /courses/{id}/availability reuses a course's calendar snapshot (its
    # trainers' hours, booked sessions and live allocations) before reading it again;
    # places and holds are read on every request. 0: every request reads it all.
    availability_snapshot_seconds: float
    inbox_retention_days: float
    # Server-Sent Event streams one API process serves at once, and for how long each
    # stays open: streams never hold more than these threads (see app/views/students.py).
    stream_slots_per_process: int
    stream_seconds: float
    # Per client address on the public (non-admin, non-webhook) endpoints.
    rate_limit_public: str
    log_level: str
    # JSON lines for log shippers (docker-compose and the image set LOG_JSON=1); off by
    # default so `make up` prints text a developer can read.
    log_json: bool
    # OpenTelemetry (core/tracing.py). Off by default: no tracer provider, no hooks.
    # On, spans go by OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (a collector, Jaeger,
    # Tempo...), in batches every OTEL_BSP_SCHEDULE_DELAY ms; a new trace is kept with
    # TRACING_SAMPLE_RATIO (a continued one follows its parent's choice).
    tracing: bool
    otel_exporter_otlp_endpoint: str
    otel_service_name: str
    otel_bsp_schedule_delay_ms: int
    tracing_sample_ratio: float
    # gunicorn (gunicorn.conf.py).
    api_bind: str
    api_workers: int
    api_threads: int
    # Where every gunicorn worker writes its Prometheus samples; /metrics sums them.
    # prometheus_client reads the variable itself at import; gunicorn.conf.py sets it.
    prometheus_multiproc_dir: str | None
    # Flower (flowerconfig.py).
    flower_address: str
    flower_port: int
    flower_db: str
    # Where a browser reaches Flower (the landing page links it, `make up` prints it):
    # behind a proxy it differs from the address Flower binds.
    flower_public_url: str
    # Celery beat's schedule state file.
    beat_schedule_file: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        broker_url = env.text("BROKER_URL", env.text("REDIS_URL", "redis://127.0.0.1:6379/0"))
        redis_default = (
            broker_url
            if broker_url.startswith(("redis", "sentinel"))
            else "redis://127.0.0.1:6379/0"
        )
        stripe_secret_key = env.text("STRIPE_SECRET_KEY", SANDBOX_SECRET_KEY)
        stripe_api_base = stripe_api_base_for(stripe_secret_key, env.optional("STRIPE_API_BASE"))
        return cls(
            database_url=env.text(
                "DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/tutorflow"
            ),
            broker_url=broker_url,
            cache_url=env.text("CACHE_URL", redis_default),
            redis_sentinel_master=env.text("REDIS_SENTINEL_MASTER", "tutorflow"),
            admin_token=env.text("ADMIN_TOKEN", "dev-admin-token"),
            flower_basic_auth=env.text("FLOWER_BASIC_AUTH", "admin:admin"),
            stripe_secret_key=stripe_secret_key,
            stripe_api_base=stripe_api_base,
            stripe_publishable_key=env.text("STRIPE_PUBLISHABLE_KEY", "pk_test_tutorflow_sandbox"),
            stripe_webhook_secrets=env.items("STRIPE_WEBHOOK_SECRETS", "whsec_tutorflow_sandbox"),
            stripe_connect_timeout=env.number("STRIPE_CONNECT_TIMEOUT", 2.0),
            stripe_read_timeout=env.number("STRIPE_READ_TIMEOUT", 5.0),
            stripe_proxy=proxy_for(stripe_api_base or STRIPE_API, env.environ),
            stripe_breaker_fail_max=env.integer("STRIPE_BREAKER_FAIL_MAX", 5),
            stripe_breaker_reset_seconds=env.number("STRIPE_BREAKER_RESET_SECONDS", 30),
            provider_retry_backoff_max=env.integer("PROVIDER_RETRY_BACKOFF_MAX", 150),
            smtp_url=env.text("SMTP_URL", "smtp://127.0.0.1:1025"),
            smtp_user=env.optional("SMTP_USER"),
            smtp_password=env.optional("SMTP_PASSWORD"),
            smtp_timeout=env.number("SMTP_TIMEOUT", 10.0),
            mail_from=env.text("MAIL_FROM", "Tutorflow <no-reply@tutorflow.local>"),
            jwt_algorithm=env.text("JWT_ALGORITHM", "HS256"),
            jwt_secret=env.text("JWT_SECRET", "dev-jwt-secret-change-me-32-bytes!"),
            jwt_public_key=env.optional("JWT_PUBLIC_KEY"),
            jwt_jwks_url=env.optional("JWT_JWKS_URL"),
            jwt_audience=env.text("JWT_AUDIENCE", "tutorflow-api"),
            jwt_issuer=env.text("JWT_ISSUER", "tutorflow-identity"),
            stream_ticket_secret=env.text(
                "STREAM_TICKET_SECRET", "dev-stream-ticket-secret-32-bytes!"
            ),
            stream_ticket_seconds=env.integer("STREAM_TICKET_SECONDS", 60),
            db_pool_size=env.integer("DB_POOL_SIZE", 5),
            db_max_overflow=env.integer("DB_MAX_OVERFLOW", 10),
            db_pool_pre_ping=env.flag("DB_POOL_PRE_PING", False),
            db_connect_timeout=env.integer("DB_CONNECT_TIMEOUT", 3),
            api_statement_timeout_ms=env.integer("API_STATEMENT_TIMEOUT_MS", 5000),
            api_lock_timeout_ms=env.integer("API_LOCK_TIMEOUT_MS", 2000),
            worker_statement_timeout_ms=env.integer("WORKER_STATEMENT_TIMEOUT_MS", 60000),
            worker_lock_timeout_ms=env.integer("WORKER_LOCK_TIMEOUT_MS", 15000),
            db_outage_retry_seconds=env.integer("DB_OUTAGE_RETRY_SECONDS", 120),
            cors_origins=env.items("CORS_ORIGINS", ""),
            visibility_timeout=env.integer("CELERY_VISIBILITY_TIMEOUT", 300),
            retry_backoff=env.integer("CELERY_RETRY_BACKOFF", 2),
            retry_backoff_max=env.integer("CELERY_RETRY_BACKOFF_MAX", 60),
            task_time_limit=env.integer("CELERY_TASK_TIME_LIMIT", 120),
            retry_jitter=env.flag("CELERY_RETRY_JITTER", True),
            step_events=env.choice("CELERY_STEP_EVENTS", "outcomes", ("outcomes", "all")),
            poison_worker_losses=env.at_least("POISON_WORKER_LOSSES", 3, 1),
            rabbitmq_management_url=env.text(
                "RABBITMQ_MANAGEMENT_URL", f"http://{urlsplit(broker_url).hostname}:15672"
            ),
            session_window=env.integer("SESSION_WINDOW", 7),
            # The window is kept full (DESIGN invariant 9): an allocation below it is
            # topped up; a lower threshold trades that for fewer, larger top-ups.
            top_up_threshold=env.integer("TOP_UP_THRESHOLD", 7),
            top_up_interval_seconds=env.number("TOP_UP_INTERVAL_SECONDS", 6 * 3600),
            top_up_batch_size=env.integer("TOP_UP_BATCH_SIZE", 1000),
            top_up_threads=env.integer("TOP_UP_THREADS", 2),
            outbox_relay_interval_seconds=env.number("OUTBOX_RELAY_INTERVAL_SECONDS", 5),
            outbox_relay_grace_seconds=env.number("OUTBOX_RELAY_GRACE_SECONDS", 10),
            outbox_retention_days=env.number("OUTBOX_RETENTION_DAYS", 7),
            pipeline_stall_seconds=env.number("PIPELINE_STALL_SECONDS", 600),
            allocation_give_up_hours=env.number("ALLOCATION_GIVE_UP_HOURS", 48),
            hold_minutes=env.number("HOLD_MINUTES", 15),
            availability_snapshot_seconds=env.number("AVAILABILITY_SNAPSHOT_SECONDS", 5),
            inbox_retention_days=env.number("INBOX_RETENTION_DAYS", 30),
            stream_slots_per_process=env.integer("STREAM_SLOTS_PER_PROCESS", 2),
            stream_seconds=env.number("STREAM_SECONDS", 55),
            rate_limit_public=env.text("RATE_LIMIT_PUBLIC", "600/minute"),
            log_level=env.text("LOG_LEVEL", "INFO"),
            log_json=env.flag("LOG_JSON", False),
            tracing=env.flag("TRACING", False),
            otel_exporter_otlp_endpoint=env.text(
                "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"
            ),
            otel_service_name=env.text("OTEL_SERVICE_NAME", "tutorflow"),
            otel_bsp_schedule_delay_ms=env.integer("OTEL_BSP_SCHEDULE_DELAY", 5000),
            tracing_sample_ratio=env.number("TRACING_SAMPLE_RATIO", 1.0),
            api_bind=env.text("API_BIND", "127.0.0.1:8000"),
            api_workers=env.integer("API_WORKERS", 2),
            api_threads=env.integer("API_THREADS", 4),
            prometheus_multiproc_dir=env.optional("PROMETHEUS_MULTIPROC_DIR"),
            flower_address=env.text("FLOWER_ADDRESS", "127.0.0.1"),
            flower_port=env.integer("FLOWER_PORT", 5555),
            flower_db=env.text("FLOWER_DB", ".flower/flower.db"),
            flower_public_url=env.text(
                "FLOWER_PUBLIC_URL", f"http://127.0.0.1:{env.integer('FLOWER_PORT', 5555)}"
            ),
            beat_schedule_file=env.text("BEAT_SCHEDULE_FILE", ".beat-schedule"),
        )


@cache
def get_settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings.from_env()
