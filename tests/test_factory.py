"""The application factory (flaskr's pattern): configuration and wiring."""

from app import create_app


def test_config_defaults_are_not_testing(db_connection):
    assert not create_app({"CONFIGURE_LOGGING": False}).testing


def test_test_config_overrides_defaults(db_connection):
    app = create_app({"TESTING": True, "CONFIGURE_LOGGING": False, "ADMIN_TOKEN": "x"})
    assert app.testing
    assert app.config["ADMIN_TOKEN"] == "x"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_checks_database_broker_and_migrations(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "migrations": "ok", "broker": "ok"}


def test_readyz_answers_503_when_the_broker_is_unreachable(db_connection):
    app = create_app(
        {"TESTING": True, "CONFIGURE_LOGGING": False, "REDIS_URL": "redis://127.0.0.1:1/0"}
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
        "/api/v1/webhooks/payments",
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
