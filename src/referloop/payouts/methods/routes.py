from __future__ import annotations

import uuid
from typing import Annotated

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
from referloop.payouts.methods.schemas import PayoutMethodIn, PayoutMethodList, PayoutMethodOut

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
MethodBody = Annotated[PayoutMethodIn, Body(openapi_examples=_EXAMPLES)]


@router.get("", response_model=PayoutMethodList)
async def list_methods(principal: CurrentMember, session: ReadSession) -> PayoutMethodList:
    """Your payout methods, masked."""
    methods = await service.list_methods(session, principal.user_id)
    return PayoutMethodList(items=[PayoutMethodOut.model_validate(m) for m in methods])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PayoutMethodOut,
    responses=problem_responses(409, 422),
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
    receive payouts 24 hours after it is added (a stolen session cannot redirect money at once)."""

    async def handler() -> tuple[int, PayoutMethodOut]:
        method = await service.add_method(session, rt, principal.user_id, body, ctx)
        return 201, PayoutMethodOut.model_validate(method)

    return await run_idempotent(
        session,
        scope=member_scope("payout_methods", principal.user_id),
        key=idempotency_key,
        fingerprint=request_fingerprint(request, body),
        handler=handler,
    )


@router.get("/{method_id}", response_model=PayoutMethodOut, responses=problem_responses(404))
async def get_method(method_id: uuid.UUID, principal: CurrentMember, session: ReadSession) -> PayoutMethodOut:
    return PayoutMethodOut.model_validate(await service.get_method(session, principal.user_id, method_id))


@router.put("/{method_id}", response_model=PayoutMethodOut, responses=problem_responses(404, 409, 422))
async def replace_method(
    method_id: uuid.UUID,
    body: MethodBody,
    principal: CurrentMember,
    session: WriteSession,
    rt: RuntimeDep,
    ctx: ContextDep,
) -> PayoutMethodOut:
    """Change a method's details; the 24-hour cool-down starts again."""
    return PayoutMethodOut.model_validate(
        await service.replace_method(session, rt, principal.user_id, method_id, body, ctx)
    )


@router.delete("/{method_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(404))
async def remove_method(
    method_id: uuid.UUID, principal: CurrentMember, session: WriteSession, ctx: ContextDep
) -> None:
    await service.remove_method(session, principal.user_id, method_id, ctx)
