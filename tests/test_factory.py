"""The application factory (flaskr's pattern): configuration and wiring."""

import dataclasses

import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from app import create_app
from app.runtime import runtime
from core.cache import read_model_key
from core.config import Settings
from harness.database import rebuild_database
from harness.test_stores import sibling_database
from tests.conftest import ADMIN, settings


def test_an_app_is_not_testing_unless_asked(db_connection):
    app = create_app(settings)
    assert not app.testing
    assert create_app(settings, testing=True).testing


def test_settings_come_from_the_environment_once_with_the_broker_fallback():
    assert Settings.from_env({"REDIS_URL": "redis://old:6379/3"}).broker_url == (
        "redis://old:6379/3"
    )
    both = Settings.from_env({"REDIS_URL": "redis://old/3", "BROKER_URL": "redis://new/4"})
    assert both.broker_url == "redis://new/4"
    assert both.cache_url == "redis://new/4"  # a Redis broker is the cache by default
    amqp = Settings.from_env({"BROKER_URL": "amqp://guest@rabbit//"})
    assert amqp.cache_url == "redis://127.0.0.1:6379/0"  # the cache is always Redis
    assert Settings.from_env({"LOG_JSON": "off"}).log_json is False


def test_a_malformed_setting_names_the_variable_and_the_form_it_wants():
    with pytest.raises(ValueError, match=r"API_THREADS='four': expected a whole number, like 4"):
        Settings.from_env({"API_THREADS": "four"})
    with pytest.raises(ValueError, match=r"HOLD_MINUTES='soon': expected a number, like 15"):
        Settings.from_env({"HOLD_MINUTES": "soon"})
    assert Settings.from_env({"HOLD_MINUTES": " 20 "}).hold_minutes == 20
    with pytest.raises(ValueError, match=r"POISON_WORKER_LOSSES=0: expected .* at least 1"):
        Settings.from_env({"POISON_WORKER_LOSSES": "0"})


def test_the_development_key_goes_to_the_sandbox_and_any_other_key_to_stripe():
    """No export needed for `make up`, `make urls`, the simulator or the CLI, and no
    default that sends a real key to the sandbox or the development key to Stripe."""
    assert Settings.from_env({}).stripe_api_base == "http://127.0.0.1:12111"
    real = Settings.from_env({"STRIPE_SECRET_KEY": "sk_test_from_the_dashboard"})
    assert real.stripe_api_base is None  # api.stripe.com
    told = {"STRIPE_API_BASE": "http://127.0.0.1:4242"}  # the tests' own sandbox
    assert Settings.from_env(told).stripe_api_base == "http://127.0.0.1:4242"
    with pytest.raises(ValueError, match="not a Stripe key"):
        Settings.from_env({"STRIPE_API_BASE": "https://api.stripe.com"})
    with pytest.raises(ValueError, match="only to Stripe over HTTPS"):
        Settings.from_env({"STRIPE_SECRET_KEY": "sk_live_x", **told})
    live = Settings.from_env({"STRIPE_SECRET_KEY": "sk_live_x"})
    assert live.stripe_api_base is None


def test_admin_token_comes_from_the_apps_own_settings(db_connection):
    other = create_app(dataclasses.replace(settings, admin_token="x"), testing=True)
    client = other.test_client()
    assert client.get("/api/v1/admin/dead-letters", headers=ADMIN).status_code == 401
    ok = client.get("/api/v1/admin/dead-letters", headers={"Authorization": "Bearer x"})
    assert ok.status_code == 200


def test_a_second_app_with_other_settings_really_uses_its_database_and_cache(committed):
    """flaskr's pattern: an app made with other settings writes to its own database and
    caches in its own Redis, while the default app's stores see nothing of it."""
    other_url = sibling_database(settings.database_url, "second_app")
    other_cache = settings.cache_url.rsplit("/", 1)[0] + "/15"
    rebuild_database(other_url)
    other_redis = redis.Redis.from_url(other_cache)
    other_redis.flushdb()
    other = create_app(
        dataclasses.replace(settings, database_url=other_url, cache_url=other_cache),
        testing=True,
    )
    client = other.test_client()
    body = {"name": "Second", "email": "second@example.com", "timezone": "UTC"}
    created = client.post("/api/v1/students", json=body, headers=ADMIN)
    assert created.status_code == 201, created.json
    student_id = created.json["id"]
    assert client.get(f"/api/v1/students/{student_id}/home", headers=ADMIN).status_code == 200

    engine = create_engine(other_url)
    try:
        with engine.connect() as connection:
            emails = connection.scalars(text("SELECT email FROM students")).all()
    finally:
        engine.dispose()
    assert emails == ["second@example.com"]
    with other.app_context():
        assert runtime().database.url == other_url
    assert other_redis.get(read_model_key("home", student_id)) is not None
    default_redis = redis.Redis.from_url(settings.cache_url)
    assert default_redis.get(read_model_key("home", student_id)) is None
    with committed.connect() as connection:  # the default app's database
        assert connection.scalar(text("SELECT count(*) FROM students")) == 0
    other_redis.flushdb()


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_checks_database_broker_and_migrations(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "migrations": "ok", "broker": "ok"}
    # Which server it writes to: the test database's, over TCP.
    url = make_url(settings.database_url)
    assert response.json["details"]["database_server"] == f"{url.host}:{url.port or 5432}"


def test_readyz_answers_503_when_the_broker_is_unreachable(db_connection):
    app = create_app(
        dataclasses.replace(settings, broker_url="redis://127.0.0.1:1/0"), testing=True
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["broker"].startswith("unavailable")


def test_openapi_document_lists_the_contract(client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for path in (
        "/api/v1/payments",
        "/api/v1/payments/{payment_id}/confirm",
        "/api/v1/payments/{payment_id}",
        "/api/v1/webhooks/stripe",
        "/api/v1/students",
    ):
        assert path in spec["paths"]


def test_every_response_carries_a_request_id(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc"}).headers["X-Request-ID"] == "abc"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32


def test_metrics_exposes_request_latency_and_dead_letters(client):
    client.get("/healthz")
    body = client.get("/metrics").get_data(as_text=True)
    assert "tutorflow_http_request_duration_seconds_bucket" in body
    assert "tutorflow_dead_letters_open 0.0" in body
