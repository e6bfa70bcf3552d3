from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status
from fastapi.responses import JSONResponse

from referloop.core.deps import ContextDep, ReadSession, RuntimeDep, WriteSession
from referloop.core.errors import problem_responses
from referloop.core.idempotency import (
    idempotency_key_header,
    member_scope,
    request_fingerprint,
    run_idempotent,
)
from referloop.identity.deps import CurrentMember
from referloop.payouts.methods import service
from referloop.payouts.methods.schemas import (
    DetailsIn,
    OnboardingLinkOut,
    PayoutMethodAdded,
    PayoutMethodIn,
    PayoutMethodList,
    PayoutMethodOut,
    StripeAccountMethod,
)

router = APIRouter(prefix="/v1/payout-methods", tags=["payout methods"], responses=problem_responses(401))

_EXAMPLES = {
    "bank_account": {
        "value": {
            "kind": "bank_account",
            "holder_name": "Asha Rao",
            "account_number": "50100012345678",
            "ifsc": "HDFC0001234",
        }
    },
    "iban": {
        "value": {
            "kind": "iban",
            "holder_name": "Asha Rao",
            "iban": "DE89370400440532013000",
            "bic": "COBADEFFXXX",
        }
    },
    "upi": {"value": {"kind": "upi", "upi_id": "asha.rao@okhdfc"}},
    "paypal": {"value": {"kind": "paypal", "email": "asha@example.com"}},
}
MethodBody = Annotated[
    PayoutMethodIn,
    Body(
        openapi_examples={
            **_EXAMPLES,
            "stripe_account": {
                "summary": "Stripe Connect (when payouts go through Stripe)",
                "value": {"kind": "stripe_account", "country": "US"},
            },
        }
    ),
]
DetailsBody = Annotated[DetailsIn, Body(openapi_examples=_EXAMPLES)]


@router.get("", response_model=PayoutMethodList)
async def list_methods(principal: CurrentMember, session: ReadSession) -> PayoutMethodList:
    """Your payout methods, masked."""
    methods = await service.list_methods(session, principal.user_id)
    return PayoutMethodList(items=[PayoutMethodOut.model_validate(m) for m in methods])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PayoutMethodAdded,
    responses=problem_responses(409, 422, 503),
)
async def add_method(
    body: MethodBody,
    request: Request,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
    idempotency_key: Annotated[str, Depends(idempotency_key_header)],
) -> JSONResponse:
    """Add a bank account (account number + IFSC, or IBAN + BIC), a UPI id or a PayPal email. It can
    receive payouts 24 hours after it is added (a stolen session cannot redirect money at once).

    When payouts go through Stripe, add a Stripe account instead (`kind: stripe_account` and your
    country): we create a Stripe Express account for you and answer with an `onboarding_url`, where
    Stripe asks for your identity and bank account. The method is `pending_onboarding` until Stripe
    tells us the account can be paid; the 24-hour cool-down runs from then. The link works once, so a
    replay of this request (same Idempotency-Key) answers without it: ask `/onboarding-link`."""

    async def handler() -> tuple[int, PayoutMethodAdded]:
        if isinstance(body, StripeAccountMethod):
            method, link = await service.add_stripe_account(
                session, rt, principal.user_id, body, idempotency_key, ctx
            )
            added = PayoutMethodAdded.model_validate(method)
            return 201, added.model_copy(
                update={"onboarding_url": link.url, "onboarding_url_expires_at": link.expires_at}
            )
        method = await service.add_method(session, rt, principal.user_id, body, ctx)
        return 201, PayoutMethodAdded.model_validate(method)

    return await run_idempotent(
        session,
        scope=member_scope("payout_methods", principal.user_id),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
        kept_for_replay=_without_onboarding_link,
    )


def _without_onboarding_link(answer: dict[str, Any]) -> dict[str, Any]:
    # Stripe's onboarding link works once and for minutes, and lets whoever holds it onboard the
    # account: it is not stored, and a replay answers without it (ask /onboarding-link for one).
    return {**answer, "onboarding_url": None, "onboarding_url_expires_at": None}


@router.get("/{method_id}", response_model=PayoutMethodOut, responses=problem_responses(404))
async def get_method(method_id: uuid.UUID, principal: CurrentMember, session: ReadSession) -> PayoutMethodOut:
    return PayoutMethodOut.model_validate(await service.show_method(session, principal.user_id, method_id))


@router.post(
    "/{method_id}/onboarding-link",
    response_model=OnboardingLinkOut,
    responses=problem_responses(404, 409, 422, 503),
)
async def onboarding_link(
    method_id: uuid.UUID, principal: CurrentMember, session: ReadSession, rt: RuntimeDep
) -> OnboardingLinkOut:
    """A fresh link to Stripe's onboarding for one of your Stripe accounts: links work once and
    expire within minutes, so ask for one each time you open it (also to give Stripe what it asks
    for when your account is `restricted`). It creates nothing of ours, so it takes no
    Idempotency-Key."""
    link = await service.new_onboarding_link(session, rt, principal.user_id, method_id)
    return OnboardingLinkOut(payout_method_id=method_id, onboarding_url=link.url, expires_at=link.expires_at)


@router.put("/{method_id}", response_model=PayoutMethodOut, responses=problem_responses(404, 409, 422))
async def replace_method(
    method_id: uuid.UUID,
    body: DetailsBody,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> PayoutMethodOut:
    """Change a method's details; the 24-hour cool-down starts again. A withdrawal to this method
    that was not sent yet is then not sent to the new details: it fails (`payout_method_changed`) and
    its amount returns to your available balance; ask again once the method is usable."""
    return PayoutMethodOut.model_validate(
        await service.replace_method(session, rt, principal.user_id, method_id, body, ctx)
    )


@router.delete("/{method_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404))
async def remove_method(
    method_id: uuid.UUID, principal: CurrentMember, session: WriteSession, ctx: ContextDep
) -> None:
    await service.remove_method(session, principal.user_id, method_id, ctx)
