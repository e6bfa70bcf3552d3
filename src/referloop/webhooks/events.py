"""Which outbox topics become which webhook events, and what a receiver sees of them.

Bodies follow the Standard Webhooks recommendation `{"type", "timestamp", "data"}`. `data` carries
the ids a partner or operator needs (referral, program, university, campaign, reward) and leaves out
member ids: a receiver identifies a referral by its id and never learns who the referrer is. Nor does
it get a state change's reason: staff write theirs (a fraud hold's suspicion) for staff, and the
partner API shows no reasons either (a lifecycle event does not say who wrote its reason)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REFERRAL_CREATED = "referral.created"
REFERRAL_STATE_CHANGED = "referral.state_changed"
REWARD_PENDING = "reward.pending"
REWARD_RELEASED = "reward.released"
REWARD_REVERSED = "reward.reversed"

EVENT_TYPES: tuple[str, ...] = (
    REFERRAL_CREATED,
    REFERRAL_STATE_CHANGED,
    REWARD_PENDING,
    REWARD_RELEASED,
    REWARD_REVERSED,
)

_REFERRAL_KEYS = ("referral_id", "program_id", "university_id", "campaign_id")
_REWARD_KEYS = ("reward_id", "referral_id", "role", "milestone", "program_id", "university_id", "campaign_id")

TOPIC_EVENTS: dict[str, str] = {
    "referrals.referral_created": REFERRAL_CREATED,
    "referrals.state_changed": REFERRAL_STATE_CHANGED,
    "rewards.pending": REWARD_PENDING,
    "rewards.released": REWARD_RELEASED,
    "rewards.reversed": REWARD_REVERSED,
}


@dataclass(frozen=True)
class OutboundEvent:
    event_type: str
    body: dict[str, Any]
    university_id: uuid.UUID | None
    program_id: uuid.UUID | None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _pick(payload: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: payload.get(k) for k in keys}


def to_outbound(topic: str, payload: dict[str, Any]) -> OutboundEvent | None:
    """The webhook event for an outbox event, or None when the topic is not one we send."""
    event_type = TOPIC_EVENTS.get(topic)
    if event_type is None:
        return None
    if event_type == REFERRAL_CREATED:
        data = {**_pick(payload, _REFERRAL_KEYS), "state": payload.get("state")}
    elif event_type == REFERRAL_STATE_CHANGED:
        data = {
            **_pick(payload, _REFERRAL_KEYS),
            "from_state": payload.get("from_state"),
            "to_state": payload.get("to_state"),
        }
    else:
        data = {
            **_pick(payload, _REWARD_KEYS),
            "amount": {"amount": payload.get("amount"), "currency": payload.get("currency")},
        }
    at = payload.get("at") or datetime.now(UTC).isoformat()
    data["occurred_at"] = at
    return OutboundEvent(
        event_type=event_type,
        body={"type": event_type, "timestamp": at, "data": data},
        university_id=_uuid(payload.get("university_id")),
        program_id=_uuid(payload.get("program_id")),
    )
