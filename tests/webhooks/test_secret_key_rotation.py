"""`referloop keys rotate` re-encrypts webhook endpoint secrets, current and previous, so that they
still sign once the old field key is removed."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from datetime import timedelta

from referloop.core.db import utcnow
from referloop.core.security.fields import FieldCipher
from referloop.runtime import Runtime
from referloop.webhooks.models import OwnerType, WebhookEndpoint
from referloop.webhooks.service.endpoints import SECRET_CONTEXT, rotate_secret_keys, signing_secrets


def _keys(runtime: Runtime, keys: str) -> Runtime:
    return dataclasses.replace(runtime, cipher=FieldCipher.from_setting(keys))


async def test_endpoint_secrets_still_sign_after_the_old_key_is_removed(runtime: Runtime) -> None:
    current = runtime.settings.field_encryption_keys.get_secret_value()
    new = f"rot{uuid.uuid4().hex[:6]}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"
    now = utcnow()
    endpoint = WebhookEndpoint(
        url="https://receiver.example.com/hook",
        secret=runtime.cipher.encrypt("whsec_current", context=SECRET_CONTEXT),
        previous_secret=runtime.cipher.encrypt("whsec_previous", context=SECRET_CONTEXT),
        previous_secret_expires_at=now + timedelta(hours=1),
        owner_type=OwnerType.operator.value,
        owner_email="ops@example.com",
    )
    async with runtime.db.sessionmaker() as s, s.begin():
        s.add(endpoint)
    try:
        result = await rotate_secret_keys(_keys(runtime, f"{new},{current}"), batch=1)
        assert result.rotated >= 2 and result.done, result
        async with runtime.db.sessionmaker() as s:
            stored = await s.get(WebhookEndpoint, endpoint.id)
        assert stored is not None
        assert signing_secrets(_keys(runtime, new), stored, now) == ["whsec_current", "whsec_previous"]
    finally:
        assert (await rotate_secret_keys(_keys(runtime, f"{current},{new}"))).done
