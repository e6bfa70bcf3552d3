"""Adding, changing, listing and removing payout methods; decrypting them for a payout; key rotation;
onboarding members to Stripe Connect (an Express account that Stripe activates when it can be paid)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.compliance import audit
from referloop.config import PayoutProviderName
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from referloop.core.ids import uuid7
from referloop.core.security.rotation import BATCH, RotationResult
from referloop.identity.service.accounts import get_user
from referloop.payouts.methods.models import PayoutMethod, PayoutMethodStatus
from referloop.payouts.methods.schemas import (
    DetailsIn,
    IbanBankAccount,
    IndianBankAccount,
    PayoutMethodIn,
    PaypalMethod,
    StripeAccountMethod,
    UpiMethod,
)
from referloop.payouts.providers.errors import (
    PermanentProviderError,
    ProviderAuthenticationFailed,
    RetryableProviderError,
)
from referloop.payouts.providers.stripe import AccountLink, ConnectedAccount, StripeConnectProvider
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

COOL_DOWN = timedelta(hours=24)
MAX_METHODS_PER_MEMBER = 10
_DETAILS_CONTEXT = "payout_methods.details"
_INDEX_CONTEXT = "payout_methods.fingerprint"


class DuplicatePayoutMethod(Conflict):
    code = "duplicate_payout_method"
    title = "Payout method already added"


class TooManyPayoutMethods(Conflict):
    code = "too_many_payout_methods"
    title = "Too many payout methods"


class PayoutMethodNotActive(Conflict):
    code = "payout_method_not_active"
    title = "Payout method not active yet"


class StripeConnectNotUsed(InvalidInput):
    code = "stripe_connect_not_used"
    title = "Payouts do not go through Stripe"


class NotAStripeAccount(Conflict):
    code = "not_a_stripe_account"
    title = "Not a Stripe account"


class StripeRefusedAccount(InvalidInput):
    code = "stripe_refused_account"
    title = "Stripe refused the account"


class StripeOnboardingUnavailable(ServiceUnavailable):
    code = "stripe_onboarding_unavailable"
    title = "Stripe onboarding unavailable"


STRIPE_KIND = "stripe_account"


def _mask_tail(value: str, keep: int = 4) -> str:
    return "••••" + value[-keep:]


def _identity_of(details: dict[str, Any]) -> str:
    """The normalized identity of a method's (normalized) details, for its fingerprint. Read from
    the stored details as they are, so that key rotation never re-validates rows that older rules
    admitted."""
    kind = details["kind"]
    if kind == "bank_account":
        return f"in:{details['ifsc']}:{details['account_number']}"
    if kind == "iban":
        return f"iban:{details['iban']}"
    if kind == "upi":
        return f"upi:{details['upi_id']}"
    if kind == "paypal":
        return f"paypal:{details['email']}"
    assert kind == STRIPE_KIND, kind
    return f"{STRIPE_KIND}:{details['account_id']}"


def _describe(data: PayoutMethodIn) -> tuple[dict[str, Any], str, str]:
    """(details to encrypt, masked form, normalized identity for the fingerprint)."""
    assert not isinstance(data, StripeAccountMethod), "a connected account is made, see add_stripe_account"
    details = data.model_dump(exclude={"label"})
    if isinstance(data, IndianBankAccount):
        masked = f"{data.ifsc[:4]} {_mask_tail(data.account_number)}"
    elif isinstance(data, IbanBankAccount):
        masked = f"{data.iban[:2]} {_mask_tail(data.iban)}"
    elif isinstance(data, UpiMethod):
        name, _, bank = data.upi_id.partition("@")
        masked = f"{name[:2]}••••@{bank}"
    else:
        assert isinstance(data, PaypalMethod)
        local, _, domain = data.email.partition("@")
        masked = f"{local[:2]}••••@{domain}"
    return details, masked, _identity_of(details)


def _stripe_masked(account_id: str) -> str:
    return f"{account_id[:5]}••••{account_id[-4:]}"


def _fingerprint(rt: Runtime, member_id: uuid.UUID, identity: str) -> bytes:
    """The fingerprint to store (under the primary field key)."""
    return rt.cipher.blind_index(f"{member_id}:{identity}", context=_INDEX_CONTEXT)


def _fingerprints(rt: Runtime, member_id: uuid.UUID, identity: str) -> list[bytes]:
    """The fingerprints to look a method up by: under every configured key, so that methods written
    before a key rotation still match until `referloop keys rotate` recomputes theirs."""
    return rt.cipher.blind_indexes(f"{member_id}:{identity}", context=_INDEX_CONTEXT)


def _public(method: PayoutMethod) -> dict[str, Any]:
    return {
        "id": str(method.id),
        "kind": method.kind,
        "masked": method.masked,
        "label": method.label,
        "status": method.status,
    }


async def _owned(
    session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID, *, lock: bool = False
) -> PayoutMethod:
    stmt = select(PayoutMethod).where(
        PayoutMethod.id == method_id, PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None)
    )
    method = await session.scalar(stmt.with_for_update() if lock else stmt)
    if method is None:
        raise NotFound("No such payout method.")
    return method


def _store(
    rt: Runtime, method: PayoutMethod, kind: str, details: dict[str, Any], masked: str, identity: str
) -> str:
    method.kind = kind
    method.details_encrypted = rt.cipher.encrypt(orjson.dumps(details).decode(), context=_DETAILS_CONTEXT)
    method.key_id = rt.cipher.primary_kid
    method.masked = masked
    method.fingerprint = _fingerprint(rt, method.member_id, identity)
    method.usable_from = utcnow() + COOL_DOWN
    return identity


def _apply(rt: Runtime, method: PayoutMethod, data: PayoutMethodIn) -> str:
    details, masked, identity = _describe(data)
    _store(rt, method, data.kind, details, masked, identity)
    method.label = data.label
    method.status = PayoutMethodStatus.active.value
    method.status_reported_at = None
    return identity


async def _flush_unique(session: AsyncSession, rt: Runtime, method: PayoutMethod, identity: str) -> None:
    """Flush `method`, refusing a second live method with the same details. The unique index sees
    only fingerprints under one key; while a key rotation is under way the member's methods are also
    checked under every other configured key."""
    with session.no_autoflush:
        taken = await session.scalar(
            select(PayoutMethod.id)
            .where(
                PayoutMethod.member_id == method.member_id,
                PayoutMethod.fingerprint.in_(_fingerprints(rt, method.member_id, identity)),
                PayoutMethod.deleted_at.is_(None),
                PayoutMethod.id != method.id,
            )
            .limit(1)
        )
    if taken is not None:
        raise DuplicatePayoutMethod("You have already added this payout method.")
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise DuplicatePayoutMethod("You have already added this payout method.") from exc


async def _check_room(session: AsyncSession, member_id: uuid.UUID) -> None:
    count = await session.scalar(
        select(func.count()).where(PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None))
    )
    if (count or 0) >= MAX_METHODS_PER_MEMBER:
        raise TooManyPayoutMethods(f"Remove a method first: at most {MAX_METHODS_PER_MEMBER} are allowed.")


async def add_method(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, data: PayoutMethodIn, ctx: RequestContext
) -> PayoutMethod:
    """A bank account, IBAN, UPI id or PayPal email (a Stripe account: `add_stripe_account`)."""
    await _check_room(session, member_id)
    method = PayoutMethod(id=uuid7(), member_id=member_id)
    identity = _apply(rt, method, data)
    session.add(method)
    await _flush_unique(session, rt, method, identity)
    await _audit_added(session, method, member_id, ctx)
    return method


async def _audit_added(
    session: AsyncSession, method: PayoutMethod, member_id: uuid.UUID, ctx: RequestContext
) -> None:
    await audit.record(
        session,
        action="payout_method.added",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        after=_public(method),
        ctx=ctx,
    )


async def replace_method(
    session: AsyncSession,
    rt: Runtime,
    member_id: uuid.UUID,
    method_id: uuid.UUID,
    data: DetailsIn,
    ctx: RequestContext,
) -> PayoutMethod:
    """New details for a method; the cool-down starts again. A Stripe account is not changed into
    anything (it stays Stripe's), nor anything into one: add it, remove the other."""
    method = await _owned(session, member_id, method_id, lock=True)
    if method.kind == STRIPE_KIND:
        raise NotAStripeAccount(
            "A Stripe account cannot be changed here: update it on Stripe (POST "
            f"/v1/payout-methods/{method.id}/onboarding-link), or remove it and add another method."
        )
    before = _public(method)
    identity = _apply(rt, method, data)
    await _flush_unique(session, rt, method, identity)
    await audit.record(
        session,
        action="payout_method.changed",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        before=before,
        after=_public(method),
        ctx=ctx,
    )
    return method


async def remove_method(
    session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID, ctx: RequestContext
) -> None:
    method = await _owned(session, member_id, method_id, lock=True)
    method.deleted_at = utcnow()
    await audit.record(
        session,
        action="payout_method.removed",
        actor_id=member_id,
        target_type="payout_method",
        target_id=method.id,
        before=_public(method),
        ctx=ctx,
    )


async def list_methods(session: AsyncSession, member_id: uuid.UUID) -> list[PayoutMethod]:
    return list(
        (
            await session.scalars(
                select(PayoutMethod)
                .where(PayoutMethod.member_id == member_id, PayoutMethod.deleted_at.is_(None))
                .order_by(PayoutMethod.created_at)
            )
        ).all()
    )


async def show_method(session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID) -> PayoutMethod:
    """One of the member's methods, whatever its status (to show it)."""
    return await _owned(session, member_id, method_id)


async def get_method(session: AsyncSession, member_id: uuid.UUID, method_id: uuid.UUID) -> PayoutMethod:
    """One of the member's methods, to pay it: a method that cannot receive payouts (a Stripe
    account not onboarded yet, or restricted by Stripe) is refused with a 409 that says so."""
    method = await _owned(session, member_id, method_id)
    if method.status == PayoutMethodStatus.pending_onboarding.value:
        raise PayoutMethodNotActive(
            "This Stripe account cannot receive payouts until you finish Stripe's onboarding: open a "
            f"link from POST /v1/payout-methods/{method.id}/onboarding-link.",
            method_status=method.status,
        )
    if method.status == PayoutMethodStatus.restricted.value:
        raise PayoutMethodNotActive(
            "Stripe has paused payouts to this account until you give it more information: open a "
            f"link from POST /v1/payout-methods/{method.id}/onboarding-link.",
            method_status=method.status,
        )
    return method


def decrypt_details(rt: Runtime, method: PayoutMethod) -> dict[str, Any]:
    """The full account details, for the payout provider call only. Never log or return them."""
    details: dict[str, Any] = orjson.loads(
        rt.cipher.decrypt(method.details_encrypted, context=_DETAILS_CONTEXT)
    )
    return details


async def rotate_keys(rt: Runtime, batch: int = BATCH) -> RotationResult:
    """`referloop keys rotate` for payout methods: re-encrypt and re-fingerprint every method (live
    or removed) not under the primary key, a batch per transaction, each row locked FOR UPDATE (a
    method an in-flight withdrawal holds is waited for, not skipped). A method whose new fingerprint
    is another live method's (the same account added twice while the key changed) is left as it
    is and named in `conflicts`, for staff to remove one of the two."""
    result = RotationResult("payout_methods")
    primary = rt.cipher.primary_kid
    after: uuid.UUID | None = None
    while True:
        async with rt.db.sessionmaker() as session, session.begin():
            stmt = (
                select(PayoutMethod)
                .where(PayoutMethod.key_id != primary)
                .order_by(PayoutMethod.id)
                .limit(batch)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            if after is not None:
                stmt = stmt.where(PayoutMethod.id > after)
            rows = (await session.scalars(stmt)).all()
            after = rows[-1].id if rows else after
            refingerprinted: dict[bytes, uuid.UUID] = {}  # live ones, in this batch (not flushed)
            for method in rows:
                details = decrypt_details(rt, method)
                fingerprint = _fingerprint(rt, method.member_id, _identity_of(details))
                if method.deleted_at is None:
                    twin = refingerprinted.get(fingerprint) or await session.scalar(
                        select(PayoutMethod.id).where(
                            PayoutMethod.member_id == method.member_id,
                            PayoutMethod.fingerprint == fingerprint,
                            PayoutMethod.deleted_at.is_(None),
                            PayoutMethod.id != method.id,
                        )
                    )
                    if twin is not None:
                        result.conflicts.append(
                            f"payout method {method.id} of member {method.member_id} has the same "
                            f"details as live method {twin}: remove one, then run this again"
                        )
                        continue
                method.details_encrypted = rt.cipher.encrypt(
                    orjson.dumps(details).decode(), context=_DETAILS_CONTEXT
                )
                method.key_id = primary
                method.fingerprint = fingerprint
                if method.deleted_at is None:
                    refingerprinted[fingerprint] = method.id
                result.rotated += 1
        if len(rows) < batch:
            break
    async with rt.db.sessionmaker() as session:
        left = await session.scalar(select(func.count()).where(PayoutMethod.key_id != primary))
        result.remaining = left or 0
    return result


# -- Stripe Connect onboarding ------------------------------------------------------------------


def _stripe(rt: Runtime) -> StripeConnectProvider:
    if rt.settings.payout_provider is not PayoutProviderName.stripe:
        raise StripeConnectNotUsed(
            f"Payouts go through {rt.settings.payout_provider.value}, not Stripe: add a method it pays "
            "(a bank account, IBAN, UPI id or PayPal email) instead of a Stripe account."
        )
    if not (rt.settings.stripe_onboarding_return_url and rt.settings.stripe_onboarding_refresh_url):
        log.error("stripe_onboarding_not_configured")
        raise StripeOnboardingUnavailable(
            "Stripe onboarding is not set up on this server yet; please try again later."
        )
    return StripeConnectProvider(rt.settings)


def _stripe_failure(exc: Exception) -> Exception:
    """A provider error during onboarding, as the member should see it."""
    if isinstance(exc, RetryableProviderError | ProviderAuthenticationFailed):
        log.error("stripe_onboarding_failed", error=str(exc), code=getattr(exc, "code", None))
        return StripeOnboardingUnavailable("Stripe did not answer as expected; please try again shortly.")
    assert isinstance(exc, PermanentProviderError)
    return StripeRefusedAccount(f"Stripe refused it: {exc.detail}", stripe_code=exc.provider_code)


async def _link(rt: Runtime, provider: StripeConnectProvider, account_id: str) -> AccountLink:
    # A fresh key each time: every call is meant to make a new link (the old one may be used up).
    return await provider.create_account_link(
        account_id,
        refresh_url=rt.settings.stripe_onboarding_refresh_url,
        return_url=rt.settings.stripe_onboarding_return_url,
        idempotency_key=f"referloop-link-{uuid.uuid4().hex}",
    )


def account_key(member_id: uuid.UUID, idempotency_key: str) -> str:
    """Stripe's key for creating a member's account: the member's own key (a retry of their request
    finds the account made first), scoped to them (keys are per platform at Stripe, not per member)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"referloop-account-{member_id.hex}-{digest}"


async def add_stripe_account(
    session: AsyncSession,
    rt: Runtime,
    member_id: uuid.UUID,
    data: StripeAccountMethod,
    idempotency_key: str,
    ctx: RequestContext,
) -> tuple[PayoutMethod, AccountLink]:
    """Create the member's Express account at Stripe and a link to its onboarding. The method is
    `pending_onboarding` (it cannot be paid) until Stripe reports the account can be paid."""
    provider = _stripe(rt)
    try:
        await _check_room(session, member_id)
        user = await get_user(session, member_id)
        try:
            account = await provider.create_express_account(
                country=data.country,
                email=user.email,
                member_id=str(member_id),
                idempotency_key=account_key(member_id, idempotency_key),
            )
            link = await _link(rt, provider, account.account_id)
        except (PermanentProviderError, RetryableProviderError) as exc:
            raise _stripe_failure(exc) from exc
    finally:
        await provider.aclose()

    method = PayoutMethod(id=uuid7(), member_id=member_id)
    identity = _store(
        rt,
        method,
        STRIPE_KIND,
        # Field names of StripeAccountDestination, so that it validates as one for a payout.
        {"kind": STRIPE_KIND, "account_id": account.account_id, "country": data.country},
        _stripe_masked(account.account_id),
        _identity_of({"kind": STRIPE_KIND, "account_id": account.account_id}),
    )
    method.label = data.label
    method.status = PayoutMethodStatus.pending_onboarding.value
    session.add(method)
    await _flush_unique(session, rt, method, identity)
    await _audit_added(session, method, member_id, ctx)
    log.info("stripe_account_created", payout_method_id=str(method.id), member_id=str(member_id))
    return method, link


async def new_onboarding_link(
    session: AsyncSession, rt: Runtime, member_id: uuid.UUID, method_id: uuid.UUID
) -> AccountLink:
    """A fresh Stripe onboarding link for one of the member's Stripe accounts (links expire within
    minutes and work once). Also how a restricted account gives Stripe what it asks for."""
    method = await _owned(session, member_id, method_id)
    if method.kind != STRIPE_KIND:
        raise NotAStripeAccount(f"This is a {method.kind} method: only Stripe accounts are onboarded.")
    provider = _stripe(rt)
    try:
        account_id = str(decrypt_details(rt, method)["account_id"])
        return await _link(rt, provider, account_id)
    except (PermanentProviderError, RetryableProviderError) as exc:
        raise _stripe_failure(exc) from exc
    finally:
        await provider.aclose()


async def apply_account_update(
    session: AsyncSession, rt: Runtime, account: ConnectedAccount, reported_at: datetime
) -> str:
    """Apply what Stripe says of a connected account (`account.updated`): a method becomes `active`
    when Stripe can pay the account (its 24-hour cool-down starts then, on the first activation),
    and `restricted` when Stripe stops that. Older reports than the one applied change nothing, and
    so does the same report twice. Returns what happened, for the webhook inbox."""
    try:
        member_id = uuid.UUID(account.member_id or "")
    except ValueError:
        return f"ignored: {account.account_id} is not an account we created for a member"
    fingerprints = _fingerprints(
        rt, member_id, _identity_of({"kind": STRIPE_KIND, "account_id": account.account_id})
    )
    method = await session.scalar(
        select(PayoutMethod)
        .where(
            PayoutMethod.member_id == member_id,
            PayoutMethod.fingerprint.in_(fingerprints),
            PayoutMethod.kind == STRIPE_KIND,
            PayoutMethod.deleted_at.is_(None),
        )
        .with_for_update()
    )
    if method is None:
        return f"ignored: no payout method for {account.account_id}"
    if method.status_reported_at is not None and reported_at < method.status_reported_at:
        return "ignored: older than the account state applied"
    method.status_reported_at = reported_at

    before = _public(method)
    old = PayoutMethodStatus(method.status)
    if account.can_be_paid(connect_payouts=rt.settings.stripe_connect_payouts):
        new = PayoutMethodStatus.active
    elif old is PayoutMethodStatus.pending_onboarding:
        new = old
    else:
        new = PayoutMethodStatus.restricted
    if new is old:
        await session.flush()
        return f"unchanged: {old.value}"
    method.status = new.value
    if old is PayoutMethodStatus.pending_onboarding:
        # The cool-down of a new method counts from when it can first be paid.
        method.usable_from = utcnow() + COOL_DOWN
    await session.flush()
    await audit.record(
        session,
        action=f"payout_method.{'activated' if new is PayoutMethodStatus.active else 'restricted'}",
        actor_id=None,
        actor_type="system",
        target_type="payout_method",
        target_id=method.id,
        before=before,
        after={
            **_public(method),
            "details_submitted": account.details_submitted,
            "payouts_enabled": account.payouts_enabled,
            "transfers": account.transfers,
            "disabled_reason": account.disabled_reason,
        },
    )
    log.info("stripe_account_status", payout_method_id=str(method.id), status=new.value)
    return f"{new.value}: {method.id}"
