"""A field-key rotation seen from referrals: while a new key is first and the old one still
configured, leads indexed under the old key keep matching (a duplicate invitation, the lead signing
up, a partner's report one by one or in a batch); `rotate_lead_keys` re-encrypts and re-indexes
them, after which the old key can go."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from referloop.core.security.fields import FieldCipher
from referloop.referrals.lifecycle.errors import DuplicateLead
from referloop.referrals.lifecycle.service import OutcomeKind, OutcomeReport
from referloop.referrals.lifecycle.service.leads import (
    email_index,
    open_lead_email,
    open_lead_name,
    phone_index,
    rotate_lead_keys,
)
from referloop.referrals.lifecycle.service.outcome_batches import apply_partner_outcomes
from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import Admin, sql
from tests.referrals.lifecycle.helpers import CTX, invite, lead_email, make_catalogue, report, share_click
from tests.referrals.lifecycle.test_signups import deliver_signup


def _with_keys(runtime: Runtime, keys: str) -> Runtime:
    return dataclasses.replace(runtime, cipher=FieldCipher.from_setting(keys))


def _new_key() -> tuple[str, str]:
    kid = f"rot{uuid.uuid4().hex[:6]}"
    return kid, f"{kid}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


async def _forget_sealed_under(runtime: Runtime, kid: str) -> None:
    """Outbox messages sealed under the test's key (no later test can open them)."""
    await sql(runtime, "DELETE FROM outbox_events WHERE payload::text LIKE :k", k=f'%"v1.{kid}.%')


async def test_leads_indexed_under_the_old_key_match_during_and_after_a_rotation(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    current = runtime.settings.field_encryption_keys.get_secret_value()
    kid, new = _new_key()
    rotated = _with_keys(runtime, f"{new},{current}")
    new_only = _with_keys(runtime, new)
    back = _with_keys(runtime, f"{current},{new}")
    cat = await make_catalogue(client, admin)
    referrer = await register_member(client)
    local = uuid.uuid4().hex[:10]
    email, phone = f"{local}@gmail.com", f"+9198{uuid.uuid4().int % 10**8:08d}"
    other_phone = f"+9197{uuid.uuid4().int % 10**8:08d}"
    invited = await invite(runtime, uuid.UUID(referrer.id), cat.program_id, email=email, phone=phone)
    by_phone = await invite(runtime, uuid.UUID(referrer.id), cat.program_id, phone=other_phone)
    by_email = lead_email()
    batch_lead = await invite(runtime, uuid.UUID(referrer.id), cat.program_id, email=by_email)
    try:
        # The new key is first: the old indexes still match.
        with pytest.raises(DuplicateLead):
            await invite(rotated, uuid.UUID(referrer.id), cat.program_id, email=email.upper())
        click_id = await share_click(client, referrer, cat.program_id)
        referee = await register_member(client, email=email, click_id=click_id)
        await deliver_signup(rotated, referee.id)
        rows = await sql(runtime, "SELECT id, state FROM referrals WHERE member_id = :m", m=referrer.id)
        assert {(x["id"], x["state"]) for x in rows} == {
            (invited, "signed_up"),
            (by_phone, "invited"),
            (batch_lead, "invited"),
        }
        result = await report(rotated, cat.university_id, "application_submitted", phone=other_phone)
        assert (result.status, result.referral_id) == ("applied", by_phone), result
        item = OutcomeReport(
            university_id=cat.university_id,
            kind=OutcomeKind.application_submitted,
            occurred_at=datetime.now(UTC),
            external_ref=uuid.uuid4().hex,
            email=by_email,
        )
        async with rotated.db.sessionmaker() as session, session.begin():
            [batched] = await apply_partner_outcomes(session, rotated, [item], CTX)
        assert (batched.status, batched.referral_id) == ("applied", batch_lead), batched

        outcome = await rotate_lead_keys(rotated, batch=2)
        assert outcome.remaining == 0 and outcome.done, outcome
        assert outcome.rotated >= 3 * 2 + 3  # names, emails/phones and their indexes

        # The old key is gone: everything still opens and matches.
        [row] = await sql(runtime, "SELECT * FROM referrals WHERE id = :r", r=invited)
        assert open_lead_name(new_only, row["lead_name"]) == "Ravi Kumar"
        assert open_lead_email(new_only, row["lead_email"]) == email
        assert bytes(row["email_index"]) == email_index(new_only, email)
        assert bytes(row["phone_index"]) == phone_index(new_only, phone)
        with pytest.raises(DuplicateLead):
            await invite(new_only, uuid.UUID(referrer.id), cat.program_id, phone=phone)
        result = await report(new_only, cat.university_id, "application_submitted", email=email)
        assert (result.status, result.referral_id) == ("applied", invited), result
        again = await rotate_lead_keys(new_only)
        assert (again.rotated, again.remaining) == (0, 0)
    finally:
        await rotate_lead_keys(back)
        await _forget_sealed_under(runtime, kid)


async def test_an_index_whose_plaintext_is_not_stored_is_reported_not_guessed(
    client: httpx.AsyncClient, runtime: Runtime, admin: Admin
) -> None:
    """A referral made from a partner's report keeps the applicant's index but not their email: the
    rotation cannot recompute it, and says so instead of overwriting it."""
    current = runtime.settings.field_encryption_keys.get_secret_value()
    _kid, new = _new_key()
    cat = await make_catalogue(client, admin)
    referrer = await register_member(client)
    referral = await invite(runtime, uuid.UUID(referrer.id), cat.program_id)
    index = email_index(runtime, "someone.else@example.com")
    await sql(runtime, "UPDATE referrals SET email_index = :i WHERE id = :r", i=index, r=referral)
    outcome = await rotate_lead_keys(_with_keys(runtime, f"{new},{current}"))
    assert outcome.unverifiable >= 1
    assert any("no stored plaintext" in line for line in outcome.lines())
    [row] = await sql(runtime, "SELECT email_index FROM referrals WHERE id = :r", r=referral)
    assert bytes(row["email_index"]) == index
    await rotate_lead_keys(_with_keys(runtime, f"{current},{new}"))
