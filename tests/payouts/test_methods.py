import asyncio
import base64
import dataclasses
import os
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from referloop.compliance.audit.models import AuditEntry
from referloop.core.security.fields import FieldCipher, load_or_create_dev_field_key
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.methods.service import decrypt_details, rotate_keys
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


async def test_key_rotation_reencrypts_under_the_new_key(client, runtime, settings):
    m = await register_member(client)
    created = (await client.post("/v1/payout-methods", json=BANK, headers={**m.auth, **key()})).json()
    current = settings.field_encryption_keys.get_secret_value() or load_or_create_dev_field_key(
        settings.var_dir / "keys"
    )
    new_key = f"rot{uuid.uuid4().hex[:6]}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"
    rotated = dataclasses.replace(runtime, cipher=FieldCipher.from_setting(f"{new_key},{current}"))
    async with rotated.db.sessionmaker() as s, s.begin():
        assert await rotate_keys(s, rotated) >= 1
    async with rotated.db.sessionmaker() as s:
        row = await s.get(PayoutMethod, uuid.UUID(created["id"]))
        assert row is not None and row.key_id == rotated.cipher.primary_kid
        assert decrypt_details(rotated, row)["ifsc"] == "HDFC0001234"
    # The old key can no longer read it; rotating back restores it for the rest of the run.
    back = dataclasses.replace(runtime, cipher=FieldCipher.from_setting(f"{current},{new_key}"))
    async with back.db.sessionmaker() as s, s.begin():
        assert await rotate_keys(s, back) >= 1
    shown = await client.get(f"/v1/payout-methods/{created['id']}", headers=m.auth)
    assert shown.json()["masked"] == "HDFC ••••5678"


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
