"""Field keys: blind indexes under every configured key, and TOTP secrets re-encrypted by
`referloop keys rotate` (a batch per transaction)."""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import uuid

import pyotp

from referloop.core.ids import uuid7
from referloop.core.security.fields import FieldCipher
from referloop.identity.models import User
from referloop.identity.service.totp import begin_enrolment, check_code, rotate_totp_secrets
from referloop.runtime import Runtime


def _key() -> tuple[str, bytes]:
    return f"k{uuid.uuid4().hex[:6]}", os.urandom(32)


def test_blind_indexes_cover_every_key_and_new_ones_use_the_first() -> None:
    (old_id, old), (new_id, new) = _key(), _key()
    before = FieldCipher({old_id: old})
    during = FieldCipher({new_id: new, old_id: old})
    after = FieldCipher({new_id: new})
    stored = before.blind_index("a@example.com", context="c")
    assert during.blind_index("a@example.com", context="c") == after.blind_index("a@example.com", context="c")
    assert during.blind_indexes("a@example.com", context="c") == [
        after.blind_index("a@example.com", context="c"),
        stored,
    ]
    assert during.index_key_of(stored, "a@example.com", context="c") == old_id
    assert during.index_key_of(stored, "b@example.com", context="c") is None
    assert during.index_key_of(stored, "a@example.com", context="other") is None
    assert during.key_ids == (new_id, old_id)
    sealed = before.encrypt("x", context="c")
    assert not during.is_primary(sealed) and before.is_primary(sealed)
    assert during.decrypt(sealed, context="c") == "x"


async def test_totp_secrets_are_reencrypted_and_still_check(runtime: Runtime) -> None:
    current = runtime.settings.field_encryption_keys.get_secret_value()
    new = f"rot{uuid.uuid4().hex[:6]}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"
    user = User(
        id=uuid7(),
        email=f"t{uuid.uuid4().hex}@example.com",
        password_hash="!",
        display_name="T",
        referral_code=secrets.token_hex(4).upper(),
    )
    secret, _ = begin_enrolment(runtime, user)
    async with runtime.db.sessionmaker() as s, s.begin():
        s.add(user)
    try:
        result = await rotate_totp_secrets(
            dataclasses.replace(runtime, cipher=FieldCipher.from_setting(f"{new},{current}")), batch=1
        )
        assert result.rotated >= 1 and result.done, result
        async with runtime.db.sessionmaker() as s:
            stored = await s.get(User, user.id)
        assert stored is not None and stored.totp_secret is not None
        new_only = dataclasses.replace(runtime, cipher=FieldCipher.from_setting(new))
        assert check_code(new_only, stored, pyotp.TOTP(secret).now())
    finally:
        back = dataclasses.replace(runtime, cipher=FieldCipher.from_setting(f"{current},{new}"))
        assert (await rotate_totp_secrets(back)).done
