"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from referloop.compliance.audit.models import AuditEntry
from referloop.core.db import Base
from referloop.core.idempotency import IdempotencyRecord
from referloop.core.outbox.models import DeadLetter, InboxRecord, OutboxEvent
from referloop.disputes.models import Dispute, DisputeMessage
from referloop.identity.models import AuthSession, OneTimeCode, RefreshToken, User
from referloop.ledger.models import JournalEntry, LedgerAccount, PendingTransfer, Posting
from referloop.payouts.methods.models import PayoutMethod
from referloop.payouts.withdrawals.models import WebhookInbox, Withdrawal
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

__all__ = [
    "Attribution",
    "AuditEntry",
    "AuthSession",
    "Base",
    "Campaign",
    "CampaignProgram",
    "Click",
    "DeadLetter",
    "Dispute",
    "DisputeMessage",
    "IdempotencyRecord",
    "InboxRecord",
    "JournalEntry",
    "LedgerAccount",
    "MemberDevice",
    "OneTimeCode",
    "OutboxEvent",
    "PayoutMethod",
    "PendingTransfer",
    "Posting",
    "Program",
    "RefreshToken",
    "University",
    "User",
    "VanityCode",
    "WebhookInbox",
    "Withdrawal",
]
