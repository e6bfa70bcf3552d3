"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

import re

from referloop.analytics.models import FunnelDaily, Milestone, Watermark
from referloop.compliance.audit.models import AuditEntry
from referloop.core.db import Base
from referloop.core.idempotency import IdempotencyRecord
from referloop.core.outbox.models import DeadLetter, InboxRecord, OutboxEvent
from referloop.disputes.models import Dispute, DisputeMessage
from referloop.identity.models import AuthSession, OneTimeCode, RefreshToken, User
from referloop.ledger.models import JournalEntry, LedgerAccount, PendingTransfer, Posting
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.withdrawals.models import WebhookInbox, Withdrawal
from referloop.referrals.lifecycle.models import PartnerOutcome, Referral, ReferralEvent
from referloop.referrals.models import (
    Attribution,
    Campaign,
    CampaignProgram,
    Click,
    MemberDevice,
    Program,
    University,
    VanityCode,
)
from referloop.referrals.partner.models import PartnerApiKey
from referloop.referrals.rewards.models import CampaignBudget, Reward, RewardCounter, RewardRule
from referloop.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage

__all__ = [
    "Attribution",
    "AuditEntry",
    "AuthSession",
    "Base",
    "Campaign",
    "CampaignBudget",
    "CampaignProgram",
    "Click",
    "DeadLetter",
    "Dispute",
    "DisputeMessage",
    "FunnelDaily",
    "IdempotencyRecord",
    "InboxRecord",
    "JournalEntry",
    "LedgerAccount",
    "MemberDevice",
    "Milestone",
    "OneTimeCode",
    "OutboxEvent",
    "PartnerApiKey",
    "PartnerOutcome",
    "PayoutMethod",
    "PendingTransfer",
    "Posting",
    "Program",
    "Referral",
    "ReferralEvent",
    "RefreshToken",
    "Reward",
    "RewardCounter",
    "RewardRule",
    "University",
    "User",
    "VanityCode",
    "Watermark",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookInbox",
    "WebhookMessage",
    "Withdrawal",
]


_RUNTIME_PARTITION = re.compile(r"^[a-z_]+_y\d{4}m\d{2}$")


def include_in_autogenerate(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic filter: monthly partitions (`clicks_y2026m11`...) are made at run time by their
    domain, not by migrations, so autogenerate must not propose dropping them."""
    return not (
        type_ == "table" and reflected and compare_to is None and _RUNTIME_PARTITION.match(name or "")
    )
