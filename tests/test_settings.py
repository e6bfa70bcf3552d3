"""Outside development the service refuses to start with a missing or placeholder secret, and says
which; development makes its own keys under var/keys and keeps them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from referloop.config import Settings
from referloop.runtime import Runtime
from tests.conftest import TEST_FIELD_ENCRYPTION_KEYS, TEST_JWT_PRIVATE_KEY

SECRETS: dict[str, Any] = {
    "jwt_private_keys": [TEST_JWT_PRIVATE_KEY],
    "field_encryption_keys": TEST_FIELD_ENCRYPTION_KEYS,
}
SERVICES = {"database_url": "postgresql://db.internal/referloop", "redis_url": "redis://cache.internal"}


@pytest.fixture(autouse=True)
def no_secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings also read the environment, where the test run exports its own keys."""
    for name in list(os.environ):
        if name.startswith("REFERLOOP_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("env", ["production", "test"])
@pytest.mark.parametrize(
    ("missing", "setting"),
    [
        ("jwt_private_keys", "REFERLOOP_JWT_PRIVATE_KEYS"),
        ("field_encryption_keys", "REFERLOOP_FIELD_ENCRYPTION_KEYS"),
    ],
)
def test_a_missing_key_is_refused_by_name(env: str, missing: str, setting: str) -> None:
    values = {"env": env, **SERVICES, **SECRETS}
    del values[missing]
    with pytest.raises(ValidationError, match=f"env={env} refuses to start without {setting}"):
        Settings.model_validate(values)
    Settings.model_validate({"env": env, **SERVICES, **SECRETS})  # with both it starts


@pytest.mark.parametrize("env", ["production", "test"])
@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"field_encryption_keys": "k1:changeme"}, "REFERLOOP_FIELD_ENCRYPTION_KEYS"),
        ({"jwt_private_keys": ["secret"]}, "REFERLOOP_JWT_PRIVATE_KEYS"),
        ({"smtp_password": "changeme"}, "REFERLOOP_SMTP_PASSWORD"),
        ({"stripe_webhook_secret": "<your-secret>"}, "REFERLOOP_STRIPE_WEBHOOK_SECRET"),
    ],
)
def test_a_default_or_placeholder_secret_is_refused_by_name(
    env: str, override: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ValidationError, match=f"{setting} holds a default or placeholder value"):
        Settings.model_validate({"env": env, **SERVICES, **SECRETS, **override})


@pytest.mark.parametrize("setting", ["rate_limit_login", "rate_limit_code_guesses", "partner_rate_limit"])
def test_a_rate_limit_that_is_not_one_refuses_to_start(setting: str) -> None:
    # "20/min" used to start cleanly and answer every sign-in with a 500.
    with pytest.raises(ValidationError, match="not a rate limit such as"):
        Settings(env="test", **SERVICES, **SECRETS, **{setting: "20/min"})
    assert (
        getattr(Settings(env="test", **SERVICES, **SECRETS, **{setting: "20/minute"}), setting) == "20/minute"
    )


def test_production_refuses_a_fault_injection_point() -> None:
    with pytest.raises(ValidationError, match="REFERLOOP_FAULT_INJECT"):
        Settings(env="production", **SERVICES, **SECRETS, fault_inject="payouts.after_provider_call")


def test_production_also_needs_its_services() -> None:
    with pytest.raises(ValidationError, match="REFERLOOP_DATABASE_URL, REFERLOOP_REDIS_URL"):
        Settings.model_validate({"env": "production", **SECRETS})


def run_production_command(
    tmp_path: Path, command: list[str], **settings: str
) -> subprocess.CompletedProcess[str]:
    """`referloop <command>` in production with unreachable services and the given REFERLOOP_*."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "REFERLOOP_ENV": "production",
        "REFERLOOP_DATABASE_URL": "postgresql://root@127.0.0.1:1/none",
        "REFERLOOP_REDIS_URL": "redis://127.0.0.1:1",
        "REFERLOOP_FIELD_ENCRYPTION_KEYS": TEST_FIELD_ENCRYPTION_KEYS,
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "referloop", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_refuses_to_start_and_names_the_setting(tmp_path: Path) -> None:
    for command in (["migrate"], ["worker"], ["serve", "--port", "1"]):
        result = run_production_command(tmp_path, command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "refuses to start without REFERLOOP_JWT_PRIVATE_KEYS" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # no key was made up in its place


async def test_development_generates_its_keys_under_var_keys_and_keeps_them(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    settings = Settings.model_validate(
        {"env": "development", "var_dir": tmp_path, "database_url": database_url, "redis_url": redis_url}
    )
    first = Runtime.build(settings)
    try:
        keys = tmp_path / "keys"
        assert sorted(p.name for p in keys.iterdir()) == ["field-key.txt", "jwt-signing-key.pem"]
        assert all(p.stat().st_mode & 0o077 == 0 for p in keys.iterdir())  # owner only
        token, _ = first.signer.issue(user_id=uuid.uuid4(), session_id=uuid.uuid4(), role="member", mfa=False)
        ciphertext = first.cipher.encrypt("+919876543210", context="phone")
    finally:
        await first.close()
    second = Runtime.build(settings)  # a restart: same keys, nothing regenerated
    try:
        assert second.cipher.decrypt(ciphertext, context="phone") == "+919876543210"
        assert second.signer.verify(token).role == "member"  # tokens survive a restart
    finally:
        await second.close()


def test_production_sends_email_by_smtp_and_refuses_the_file_sink() -> None:
    assert Settings.model_validate({"env": "production", **SERVICES, **SECRETS}).email_backend == "smtp"
    with pytest.raises(
        ValidationError, match="env=production refuses to start with REFERLOOP_EMAIL_BACKEND=file"
    ):
        Settings.model_validate({"env": "production", **SERVICES, **SECRETS, "email_backend": "file"})
    for env in ("development", "test"):
        assert Settings.model_validate({"env": env, **SERVICES, **SECRETS}).email_backend == "file"


def test_the_production_command_refuses_the_file_email_backend(tmp_path: Path) -> None:
    result = run_production_command(
        tmp_path,
        ["migrate"],
        REFERLOOP_JWT_PRIVATE_KEYS=json.dumps([TEST_JWT_PRIVATE_KEY]),
        REFERLOOP_EMAIL_BACKEND="file",
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "refuses to start with REFERLOOP_EMAIL_BACKEND=file" in result.stderr
    assert "Traceback" not in result.stderr


def test_smtp_upgrades_to_tls_when_offered_unless_told_otherwise() -> None:
    assert Settings.model_validate({"env": "test", **SERVICES, **SECRETS}).smtp_starttls is None


@pytest.mark.parametrize("credential", [{"smtp_username": "apikey"}, {"smtp_password": "SG.x9f2kq7v"}])
def test_production_refuses_smtp_credentials_without_tls(credential: dict[str, str]) -> None:
    base = {"env": "production", **SERVICES, **SECRETS, "smtp_host": "smtp.sendgrid.net", **credential}
    for starttls in (None, False):
        with pytest.raises(ValidationError, match="refuses to send SMTP credentials without TLS"):
            Settings.model_validate({**base, "smtp_starttls": starttls})
    assert Settings.model_validate({**base, "smtp_starttls": True}).smtp_starttls is True
    # Outside production a local test relay may take credentials in plain text.
    Settings.model_validate({**base, "env": "test", "smtp_starttls": False})
    # Without credentials (a relay that trusts our network) production needs no TLS setting.
    Settings.model_validate({"env": "production", **SERVICES, **SECRETS})
