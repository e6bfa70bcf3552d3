"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from referloop.compliance.audit.models import AuditEntry
from referloop.core.db import Base
from referloop.core.idempotency import IdempotencyRecord
from referloop.disputes.models import Dispute, DisputeMessage
from referloop.core.outbox.models import DeadLetter, InboxRecord, OutboxEvent
from referloop.identity.models import AuthSession, OneTimeCode, RefreshToken, User
from referloop.ledger.models import JournalEntry, LedgerAccount, PendingTransfer, Posting
from referloop.payouts.methods.models import PayoutMethod
from referloop.referrals.models import (Attribution, Campaign, CampaignProgram, Click, MemberDevice, Program,
                                        University, VanityCode)

__all__ = [
    "JournalEntry", "LedgerAccount", "PendingTransfer", "Posting",
    "Dispute",
    "DisputeMessage","AuditEntry", "IdempotencyRecord", "PayoutMethod", "AuthSession", "Base", "DeadLetter", "InboxRecord", "OneTimeCode", "OutboxEvent",
           "RefreshToken", "User",
           "Attribution", "Campaign", "CampaignProgram", "Click", "MemberDevice", "Program", "University",
           "VanityCode"]
