"""Configuration from the environment: defaults, validation, and failing fast."""

import pytest

from app import create_app
from config import ConfigError, load_config

LIVE = {"TERRA_DEV_ID": "dev", "TERRA_API_KEY": "key", "TERRA_SIGNING_SECRET": "whsec"}


def test_defaults_run_the_sandbox_on_sqlite(tmp_path):
    config = load_config({}, str(tmp_path))
    assert config["TERRA_MODE"] == "sandbox"
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert config["TERRA_WIDGET_SESSION_URL"] == "http://127.0.0.1:5000/sandbox/api/widget/session"
    assert config["SESSION_COOKIE_HTTPONLY"] and config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert config["SESSION_COOKIE_SECURE"] is False


def test_development_secret_key_is_generated_once(tmp_path):
    first = load_config({}, str(tmp_path))["SECRET_KEY"]
    assert len(first) >= 48
    assert load_config({}, str(tmp_path))["SECRET_KEY"] == first


def test_production_requires_secret_key(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY is required"):
        load_config({"APP_ENV": "production"}, str(tmp_path))


def test_production_uses_secure_cookies(tmp_path):
    assert load_config({"APP_ENV": "production", "SECRET_KEY": "k"}, str(tmp_path))["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("missing", sorted(LIVE))
def test_partial_live_credentials_fail_fast_naming_the_missing_one(tmp_path, missing):
    env = {name: value for name, value in LIVE.items() if name != missing}
    with pytest.raises(ConfigError, match=missing):
        load_config(env, str(tmp_path))


def test_all_three_credentials_select_live_terra(tmp_path):
    config = load_config(LIVE, str(tmp_path))
    assert config["TERRA_MODE"] == "live"
    assert config["TERRA_WIDGET_SESSION_URL"] == "https://access.tryterra.co/api/widget/session"
    assert config["TERRA_SIGNING_SECRET"] == "whsec"


def test_live_mode_does_not_mount_the_sandbox(tmp_path):
    app = create_app(environ={**LIVE, "APP_ENV": "testing", "SECRET_KEY": "k",
                              "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite"})
    assert not any(rule.rule.startswith("/sandbox") for rule in app.url_map.iter_rules())


def test_blank_values_count_as_unset(tmp_path):
    config = load_config({"TERRA_DEV_ID": "", "TERRA_WIDGET_SESSION_URL": "", "DATABASE_URL": ""}, str(tmp_path))
    assert config["TERRA_MODE"] == "sandbox"
    assert config["TERRA_WIDGET_SESSION_URL"].endswith("/sandbox/api/widget/session")


@pytest.mark.parametrize("url, expected", [
    ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_postgres_urls_use_psycopg3(tmp_path, url, expected):
    assert load_config({"DATABASE_URL": url}, str(tmp_path))["SQLALCHEMY_DATABASE_URI"] == expected


@pytest.mark.parametrize("env, message", [
    ({"APP_ENV": "staging"}, "APP_ENV"),
    ({"TERRA_WIDGET_API": "v3"}, "TERRA_WIDGET_API"),
    ({"WEBHOOK_MAX_BYTES": "lots"}, "WEBHOOK_MAX_BYTES"),
])
def test_invalid_values_are_named(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env, str(tmp_path))
