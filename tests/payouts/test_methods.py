import asyncio
import base64
import dataclasses
import os
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select, text

from referloop.compliance.audit.models import AuditEntry
from referloop.config import Settings
from referloop.core.ids import uuid7
from referloop.core.security.fields import FieldCipher, load_or_create_dev_field_key
from referloop.payouts.methods.models import PayoutMethod, PayoutMethodStatus
from referloop.payouts.methods.service import (
    STRIPE_KIND,
    _identity_of,
    _store,
    apply_account_update,
    decrypt_details,
    rotate_keys,
)
from referloop.payouts.providers.stripe import ConnectedAccount
from referloop.runtime import Runtime
from tests.factories import register_member

BANK = {
    "kind": "bank_account",
    "holder_name": "Asha Rao",
    "account_number": "50100012345678",
    "ifsc": "hdfc0001234",
}


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def _count(runtime: Runtime, member_id: str) -> int:
    async with runtime.db.sessionmaker() as s:
        return len(
            (
                await s.scalars(select(PayoutMethod).where(PayoutMethod.member_id == uuid.UUID(member_id)))
            ).all()
        )


async def test_bank_account_is_stored_encrypted_and_shown_masked_with_a_cool_down(client, runtime):
    m = await register_member(client)
    r = await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["masked"] == "HDFC ••••5678"
    assert "50100012345678" not in r.text
    usable_from = datetime.fromisoformat(body["usable_from"])
    assert timedelta(hours=23, minutes=59) < usable_from - datetime.now(UTC) <= timedelta(hours=24)

    async with runtime.db.sessionmaker() as s:
        row = await s.get(PayoutMethod, uuid.UUID(body["id"]))
        assert row is not None
        assert "50100012345678" not in row.details_encrypted
        assert decrypt_details(runtime, row)["account_number"] == "50100012345678"
        audited = await s.scalar(select(AuditEntry).where(AuditEntry.target_id == body["id"]))
        assert audited is not None and audited.action == "payout_method.added"
        assert "50100012345678" not in str(audited.after)

    listed = await client.get("/v1/payout-methods", headers=m.auth)
    assert [i["id"] for i in listed.json()["items"]] == [body["id"]]


async def test_iban_upi_and_paypal_are_validated(client):
    m = await register_member(client)
    good = [
        {
            "kind": "iban",
            "holder_name": "Asha Rao",
            "iban": "DE89 3704 0044 0532 0130 00",
            "bic": "COBADEFFXXX",
        },
        {"kind": "upi", "upi_id": "Asha.Rao@okhdfc"},
        {"kind": "paypal", "email": "Asha@Example.com"},
    ]
    masks = []
    for method in good:
        r = await client.post("/v1/payout-methods", json=method, headers={**m.auth, **key()})
        assert r.status_code == 201, r.text
        masks.append(r.json()["masked"])
    assert masks == ["DE ••••3000", "as••••@okhdfc", "as••••@example.com"]

    bad = [
        {"kind": "iban", "holder_name": "Asha Rao", "iban": "DE89370400440532013001"},  # checksum off by one
        {
            "kind": "bank_account",
            "holder_name": "Asha Rao",
            "account_number": "50100012345678",
            "ifsc": "HDFC1001234",
        },
        {"kind": "bank_account", "holder_name": "Asha Rao", "account_number": "12ab", "ifsc": "HDFC0001234"},
        {"kind": "upi", "upi_id": "not-a-upi"},
        {"kind": "paypal", "email": "nobody"},
        {"kind": "cheque", "payee": "me"},
        {**BANK, "balance": 100},
    ]
    for method in bad:
        r = await client.post("/v1/payout-methods", json=method, headers={**m.auth, **key()})
        assert r.status_code == 422, (method, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert await _count_live(client, m) == 3


async def _count_live(client, m) -> int:
    return len((await client.get("/v1/payout-methods", headers=m.auth)).json()["items"])


async def test_the_same_account_twice_is_refused(client):
    m = await register_member(client)
    assert (
        await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})
    ).status_code == 201
    again = {**BANK, "ifsc": "HDFC0001234", "label": "again"}
    r = await client.post("/v1/payout-methods", json=again, headers={**m.auth, **key()})
    assert r.status_code == 409
    assert r.json()["code"] == "duplicate_payout_method"
    assert await _count_live(client, m) == 1


async def test_idempotency_key_replays_and_refuses_another_body(client, runtime):
    m = await register_member(client)
    headers = {**m.auth, **key()}
    answers = await asyncio.gather(
        *[client.post("/v1/payout-methods", json=BANK, headers=headers) for _ in range(10)]
    )
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if a.headers.get("idempotent-replayed") == "true") == 9
    assert await _count(runtime, m.id) == 1

    other = await client.post(
        "/v1/payout-methods", json={"kind": "upi", "upi_id": "asha@okicici"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await _count(runtime, m.id) == 1

    missing = await client.post("/v1/payout-methods", json=BANK, headers=m.auth)
    assert missing.status_code == 422


async def test_changing_a_method_restarts_the_cool_down_and_is_audited(client, runtime):
    m = await register_member(client)
    created = (await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})).json()
    async with runtime.db.sessionmaker() as s:
        await s.execute(
            text("UPDATE payout_methods SET usable_from = now() - interval '1 day' WHERE id = :id"),
            {"id": created["id"]},
        )
        await s.commit()
    r = await client.put(
        f"/v1/payout-methods/{created['id']}", json={"kind": "upi", "upi_id": "asha@okaxis"}, headers=m.auth
    )
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["usable_from"]) > datetime.now(UTC) + timedelta(hours=23)
    async with runtime.db.sessionmaker() as s:
        actions = (
            await s.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.target_id == created["id"])
                .order_by(AuditEntry.created_at, AuditEntry.id)
            )
        ).all()
    assert actions == ["payout_method.added", "payout_method.changed"]


async def test_member_cannot_see_or_change_another_members_method(client):
    a = await register_member(client)
    b = await register_member(client)
    created = (await client.post("/v1/payout-methods", json=BANK, headers={**a.auth, **key()})).json()
    assert (await client.get(f"/v1/payout-methods/{created['id']}", headers=b.auth)).status_code == 404
    assert (await client.delete(f"/v1/payout-methods/{created['id']}", headers=b.auth)).status_code == 404
    r = await client.put(f"/v1/payout-methods/{created['id']}", json=BANK, headers=b.auth)
    assert r.status_code == 404
    assert (await client.get(f"/v1/payout-methods/{created['id']}", headers=a.auth)).status_code == 200
    assert (await client.delete(f"/v1/payout-methods/{created['id']}", headers=a.auth)).status_code == 204
    assert await _count_live(client, a) == 0


def _current_keys(settings: Settings) -> str:
    return settings.field_encryption_keys.get_secret_value() or load_or_create_dev_field_key(
        settings.var_dir / "keys"
    )


def _new_key() -> str:
    return f"rot{uuid.uuid4().hex[:6]}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


def _keys(runtime: Runtime, keys: str) -> Runtime:
    return dataclasses.replace(runtime, cipher=FieldCipher.from_setting(keys))


async def _stripe_method(runtime: Runtime, member_id: uuid.UUID, account_id: str) -> uuid.UUID:
    """A Stripe account method waiting for onboarding, as `add_stripe_account` stores it."""
    method = PayoutMethod(id=uuid7(), member_id=member_id, label="Stripe")
    _store(
        runtime,
        method,
        STRIPE_KIND,
        {"kind": STRIPE_KIND, "account_id": account_id, "country": "US"},
        "acct_••••",
        _identity_of({"kind": STRIPE_KIND, "account_id": account_id}),
    )
    method.status = PayoutMethodStatus.pending_onboarding.value
    async with runtime.db.sessionmaker() as s, s.begin():
        s.add(method)
    return method.id


async def test_key_rotation_reencrypts_under_the_new_key(client, runtime, settings):
    m = await register_member(client)
    created = (await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})).json()
    current = _current_keys(settings)
    new_key = _new_key()
    rotated = _keys(runtime, f"{new_key},{current}")
    result = await rotate_keys(rotated, batch=1)
    assert result.rotated >= 1 and result.done, result
    async with rotated.db.sessionmaker() as s:
        row = await s.get(PayoutMethod, uuid.UUID(created["id"]))
        assert row is not None and row.key_id == rotated.cipher.primary_kid
        assert decrypt_details(rotated, row)["ifsc"] == "HDFC0001234"
        assert decrypt_details(_keys(runtime, new_key), row)["ifsc"] == "HDFC0001234"
    # Rotating back restores it for the rest of the run.
    assert (await rotate_keys(_keys(runtime, f"{current},{new_key}"))).done
    shown = await client.get(f"/v1/payout-methods/{created['id']}", headers=m.auth)
    assert shown.json()["masked"] == "HDFC ••••5678"


async def test_stripe_activates_a_method_fingerprinted_under_the_old_key(runtime, settings, client):
    """While the new key is first, Stripe's `account.updated` still finds a method fingerprinted under
    the old one; after the rotation, without the old key, too."""
    member = uuid.UUID((await register_member(client)).id)
    account_id = f"acct_{uuid.uuid4().hex[:16]}"
    method_id = await _stripe_method(runtime, member, account_id)
    current, new_key = _current_keys(settings), _new_key()
    rotated = _keys(runtime, f"{new_key},{current}")

    def update(transfers: str) -> ConnectedAccount:
        return ConnectedAccount(
            account_id=account_id,
            member_id=str(member),
            details_submitted=True,
            payouts_enabled=True,
            transfers=transfers,
            disabled_reason=None,
        )

    try:
        async with rotated.db.sessionmaker() as s, s.begin():
            outcome = await apply_account_update(s, rotated, update("active"), datetime.now(UTC))
        assert outcome == f"active: {method_id}"
        assert (await rotate_keys(rotated)).done
        new_only = _keys(runtime, new_key)
        async with new_only.db.sessionmaker() as s, s.begin():
            outcome = await apply_account_update(s, new_only, update("inactive"), datetime.now(UTC))
        assert outcome == f"restricted: {method_id}"
    finally:
        await rotate_keys(_keys(runtime, f"{current},{new_key}"))


async def test_the_same_account_cannot_be_added_again_while_a_new_key_is_first(client, settings, app_factory):
    m = await register_member(client)
    assert (
        await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})
    ).status_code == 201
    rotated = app_factory(field_encryption_keys=f"{_new_key()},{_current_keys(settings)}")
    transport = httpx.ASGITransport(app=rotated)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
        r = await other.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "duplicate_payout_method"


async def test_a_rotation_leaves_an_account_added_twice_for_staff_and_rotates_the_rest(
    client, runtime, settings
):
    """The same account added under the old and the new key (before duplicates were checked under
    every key): the rotation names the pair, rotates everything else, and says it is not done."""
    member = uuid.UUID((await register_member(client)).id)
    current, new_key = _current_keys(settings), _new_key()
    rotated = _keys(runtime, f"{new_key},{current}")
    account = f"acct_{uuid.uuid4().hex[:16]}"
    old = await _stripe_method(runtime, member, account)
    twin = await _stripe_method(rotated, member, account)
    other = await _stripe_method(runtime, member, f"acct_{uuid.uuid4().hex[:16]}")
    try:
        result = await rotate_keys(rotated, batch=1)
        assert not result.done and result.remaining == 1, result
        [conflict] = result.conflicts
        assert str(old) in conflict and str(twin) in conflict
        async with runtime.db.sessionmaker() as s:
            rows = {
                m.id: m.key_id
                for m in await s.scalars(select(PayoutMethod).where(PayoutMethod.member_id == member))
            }
        assert rows == {
            old: runtime.cipher.primary_kid,
            twin: rotated.cipher.primary_kid,
            other: rotated.cipher.primary_kid,
        }
        # Staff remove one of the two: the next run finishes.
        async with runtime.db.sessionmaker() as s, s.begin():
            await s.execute(text("UPDATE payout_methods SET deleted_at = now() WHERE id = :i"), {"i": twin})
        again = await rotate_keys(rotated)
        assert again.done and again.rotated == 1, again
    finally:
        async with runtime.db.sessionmaker() as s, s.begin():
            await s.execute(text("UPDATE payout_methods SET deleted_at = now() WHERE id = :i"), {"i": twin})
        await rotate_keys(_keys(runtime, f"{current},{new_key}"))


async def test_a_rotation_waits_for_a_locked_method_instead_of_skipping_it(client, runtime, settings):
    m = await register_member(client)
    created = (await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})).json()
    current, new_key = _current_keys(settings), _new_key()
    rotated = _keys(runtime, f"{new_key},{current}")
    try:
        async with runtime.db.sessionmaker() as holder, holder.begin():
            # As a withdrawal in flight holds it.
            await holder.execute(
                text("SELECT 1 FROM payout_methods WHERE id = :i FOR UPDATE"), {"i": created["id"]}
            )
            rotation = asyncio.create_task(rotate_keys(rotated))
            await asyncio.sleep(0.5)
            assert not rotation.done()
        result = await asyncio.wait_for(rotation, 30)
        assert result.done, result
        async with runtime.db.sessionmaker() as s:
            row = await s.get(PayoutMethod, uuid.UUID(created["id"]))
            assert row is not None and row.key_id == rotated.cipher.primary_kid
    finally:
        await rotate_keys(_keys(runtime, f"{current},{new_key}"))


async def test_an_iban_bic_must_be_well_formed_and_of_the_ibans_country(client, runtime):
    m = await register_member(client)
    de = {"kind": "iban", "holder_name": "Asha Rao", "iban": "DE89370400440532013000"}
    refused = [
        ({**de, "bic": "BNPAFRPPXXX"}, "IBAN is of an account in DE"),  # a French bank's BIC
        ({**de, "bic": "COBAXXFF"}, "Invalid BIC"),  # no such country code
        ({**de, "bic": "COBA1EFF"}, "Invalid BIC"),  # bank code of letters only
        ({**de, "bic": "COBADEF"}, "at least 8"),  # too short
        (
            {"kind": "iban", "holder_name": "Asha Rao", "iban": "GB29NWBK60161331926819", "bic": "DEUTDEFF"},
            "in GB",
        ),
    ]
    for body, why in refused:
        r = await client.post("/v1/payout-methods", json=body, headers={**m.auth, **key()})
        assert r.status_code == 422, (body, r.text)
        problem = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        [error] = problem["errors"]
        assert error["field"].split(".")[-1] == "bic", problem
        assert why in error["message"], problem
    assert await _count(runtime, m.id) == 0

    accepted = [
        {**de, "bic": "cobadeffxxx"},  # normalized to upper case
        {**de, "iban": "DE02120300000000202051", "bic": "BYLADEM1001"},
        {"kind": "iban", "holder_name": "Asha Rao", "iban": "GB29NWBK60161331926819", "bic": "NWBKGB2L"},
        # Réunion's banks have RE BICs and French IBANs.
        {
            "kind": "iban",
            "holder_name": "Asha Rao",
            "iban": "FR1420041010050500013M02606",
            "bic": "BNPARERXXXX",
        },
        {**de, "iban": "DE75512108001245126199"},  # no BIC: fine
    ]
    for body in accepted:
        r = await client.post("/v1/payout-methods", json=body, headers={**m.auth, **key()})
        assert r.status_code == 201, (body, r.text)
    created = (await client.get("/v1/payout-methods", headers=m.auth)).json()["items"]
    async with runtime.db.sessionmaker() as s:
        row = await s.get(PayoutMethod, uuid.UUID(created[0]["id"]))
        assert row is not None and decrypt_details(runtime, row)["bic"] == "COBADEFFXXX"


async def test_changing_an_iban_checks_its_bic_too(client, runtime):
    m = await register_member(client)
    body = {"kind": "iban", "holder_name": "Asha Rao", "iban": "DE89370400440532013000", "bic": "COBADEFFXXX"}
    created = (await client.post("/v1/payout-methods", json=body, headers={**m.auth, **key()})).json()
    r = await client.put(
        f"/v1/payout-methods/{created['id']}", json={**body, "iban": "GB29NWBK60161331926819"}, headers=m.auth
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"].split(".")[-1] == "bic"
    async with runtime.db.sessionmaker() as s:
        row = await s.get(PayoutMethod, uuid.UUID(created["id"]))
        assert row is not None and decrypt_details(runtime, row)["iban"] == "DE89370400440532013000"
