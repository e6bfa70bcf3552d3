"""Local stand-ins for external services that speak their documented HTTP APIs."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from referloop.config import Environment, Settings
from tests.fakes.razorpayx_server import FakeRazorpayX
from tests.fakes.stripe_server import FakeStripe


def provider_settings(
    razorpayx: FakeRazorpayX | None = None, stripe: FakeStripe | None = None, **overrides: Any
) -> Settings:
    """Settings whose payout providers talk to the given fakes with the fakes' credentials.
    Retries wait milliseconds, not seconds, so that tests of them stay fast."""
    values: dict[str, Any] = {
        "env": Environment.test,
        "payout_provider_timeout_seconds": 5.0,
        "payout_provider_retry_base_seconds": 0.01,
        "payout_provider_retry_max_seconds": 0.2,
    }
    if razorpayx is not None:
        values |= {
            "razorpayx_base_url": razorpayx.url,
            "razorpayx_key_id": razorpayx.key_id,
            "razorpayx_key_secret": razorpayx.key_secret,
            "razorpayx_account_number": razorpayx.account_number,
            "razorpayx_webhook_secret": razorpayx.webhook_secret,
        }
    if stripe is not None:
        values |= {
            "stripe_base_url": stripe.url,
            "stripe_api_key": stripe.api_key,
            "stripe_webhook_secret": stripe.webhook_secret,
            "stripe_connect_webhook_secret": stripe.connect_webhook_secret,
        }
    values.update(overrides)
    return Settings.model_validate(values)


def provider_env(razorpayx: FakeRazorpayX | None = None, stripe: FakeStripe | None = None) -> dict[str, str]:
    """The same as environment variables, for a worker started as a subprocess (crash tests)."""
    settings = provider_settings(razorpayx, stripe)
    names = [
        "payout_provider_timeout_seconds",
        "payout_provider_retry_base_seconds",
        "payout_provider_retry_max_seconds",
    ]
    if razorpayx is not None:
        names += [
            "razorpayx_base_url",
            "razorpayx_key_id",
            "razorpayx_key_secret",
            "razorpayx_account_number",
            "razorpayx_webhook_secret",
        ]
    if stripe is not None:
        names += [
            "stripe_base_url",
            "stripe_api_key",
            "stripe_webhook_secret",
            "stripe_connect_webhook_secret",
        ]
    env: dict[str, str] = {}
    for name in names:
        value = getattr(settings, name)
        env[f"REFERLOOP_{name.upper()}"] = str(
            value.get_secret_value() if isinstance(value, SecretStr) else value
        )
    return env


__all__ = ["FakeRazorpayX", "FakeStripe", "provider_env", "provider_settings"]
