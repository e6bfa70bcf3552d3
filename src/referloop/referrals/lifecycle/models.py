"""Tables of the referral lifecycle: referrals, their history, and partner outcome receipts.

A referral's referee is a member (`referee_id`) or a lead not registered yet. A lead's name, email
and phone are personal data: stored encrypted (`rt.cipher`, the column name bound as associated
data), with keyed blind indexes of the canonical email and the phone so that a sign-up or a partner
report can find the referral without decrypting anything. A member referee gets the same indexes
(from their account) so that partners can match them by email or phone too."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from referloop.core.db import Base, IdMixin, TimestampMixin, utcnow


class ReferralState(StrEnum):
    invited = "invited"
    signed_up = "signed_up"
    applied = "applied"
    enrolled = "enrolled"
    rewarded = "rewarded"
    rejected = "rejected"  # the partner refused the application
    expired = "expired"  # an invitation nobody took up within the window
    reversed = "reversed"  # the enrolment was cancelled
    fraud_hold = "fraud_hold"  # staff froze it; lifting returns to the state it was in

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({ReferralState.rejected, ReferralState.expired, ReferralState.reversed})


class ReferralSource(StrEnum):
    invite = "invite"  # the referrer invited a lead (POST /v1/referrals)
    signup = "signup"  # an attributed sign-up with no invitation before it
    click = "click"  # a partner reported an applicant who came through a share link, unregistered


class ActorType(StrEnum):
    member = "member"
    staff = "staff"
    partner = "partner"
    system = "system"


def _in(values: type[StrEnum]) -> str:
    return ",".join(f"'{v.value}'" for v in values)


class Referral(IdMixin, TimestampMixin, Base):
    __tablename__ = "referrals"

    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))  # the referrer
    referee_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    # Null only for a sign-up credited through a plain code (no program chosen yet); a partner report
    # naming one of its programs adopts it (see the outcomes service).
    program_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("programs.id"))
    university_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("universities.id"))
    # The campaign chosen when the program became known (referrals.service.campaigns.choose_campaign).
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("campaigns.id"))
    campaign_chosen_at: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(12))
    held_from_state: Mapped[str | None] = mapped_column(String(12))  # the state under a fraud hold
    source: Mapped[str] = mapped_column(String(10))
    attribution_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("attributions.id"))
    click_id: Mapped[uuid.UUID | None]
    # What the referrer is shown: first name and initial ("Asha R.").
    referee_label: Mapped[str] = mapped_column(String(40))
    lead_name: Mapped[str | None] = mapped_column(Text)  # encrypted
    lead_email: Mapped[str | None] = mapped_column(Text)  # encrypted
    lead_phone: Mapped[str | None] = mapped_column(Text)  # encrypted
    email_index: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    phone_index: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    locale: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    fee_amount: Mapped[int | None] = mapped_column(BigInteger)  # reported by the partner
    fee_currency: Mapped[str | None] = mapped_column(String(3))
    invited_at: Mapped[datetime | None]
    signed_up_at: Mapped[datetime | None]
    applied_at: Mapped[datetime | None]
    enrolled_at: Mapped[datetime | None]
    rewarded_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]  # reached a final state
    expires_at: Mapped[datetime | None]  # an invitation not taken up by then expires
    state_changed_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"state IN ({_in(ReferralState)})", name="state_known"),
        CheckConstraint(
            f"held_from_state IS NULL OR held_from_state IN ({_in(ReferralState)})",
            name="held_from_state_known",
        ),
        CheckConstraint("(state = 'fraud_hold') = (held_from_state IS NOT NULL)", name="hold_has_state"),
        CheckConstraint(f"source IN ({_in(ReferralSource)})", name="source_known"),
        CheckConstraint("referee_id IS NULL OR referee_id <> member_id", name="not_self"),
        CheckConstraint(
            "referee_id IS NOT NULL OR email_index IS NOT NULL OR phone_index IS NOT NULL"
            " OR click_id IS NOT NULL",
            name="referee_reachable",
        ),
        CheckConstraint("(program_id IS NULL) = (university_id IS NULL)", name="program_has_university"),
        CheckConstraint("fee_amount IS NULL OR fee_amount >= 0", name="fee_not_negative"),
        Index("ix_referrals_member_id_id", "member_id", "id"),
        Index("ix_referrals_referee_id", "referee_id", postgresql_where=text("referee_id IS NOT NULL")),
        Index("ix_referrals_program_id_state", "program_id", "state"),
        Index("ix_referrals_university_id", "university_id"),
        Index("ix_referrals_email_index", "email_index", postgresql_where=text("email_index IS NOT NULL")),
        Index("ix_referrals_phone_index", "phone_index", postgresql_where=text("phone_index IS NOT NULL")),
        Index("ix_referrals_click_id", "click_id", postgresql_where=text("click_id IS NOT NULL")),
        Index(
            "ix_referrals_attribution_id",
            "attribution_id",
            postgresql_where=text("attribution_id IS NOT NULL"),
        ),
        Index("ix_referrals_invited_expiry", "expires_at", postgresql_where=text("state = 'invited'")),
    )


class ReferralEvent(IdMixin, Base):
    """One row per transition (and per creation: `from_state` null). Never updated."""

    __tablename__ = "referral_events"

    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    member_id: Mapped[uuid.UUID]  # the referrer (member-owned rows carry member_id)
    from_state: Mapped[str | None] = mapped_column(String(12))
    to_state: Mapped[str] = mapped_column(String(12))
    actor_type: Mapped[str] = mapped_column(String(10))
    actor_id: Mapped[uuid.UUID | None]
    reason: Mapped[str] = mapped_column(String(500))
    occurred_at: Mapped[datetime]  # when it happened (a partner's report may arrive later)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        CheckConstraint(f"actor_type IN ({_in(ActorType)})", name="actor_type_known"),
        Index("ix_referral_events_referral_id_id", "referral_id", "id"),
    )


class PartnerOutcome(Base):
    """What a partner's report did, once per (university, the partner's own reference, kind): a
    repeated report answers `duplicate` with the referral and state it led to."""

    __tablename__ = "partner_outcomes"

    university_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("universities.id"), primary_key=True)
    external_ref: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30), primary_key=True)
    referral_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("referrals.id"))
    status: Mapped[str] = mapped_column(String(12))
    state: Mapped[str | None] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(String(500))
    occurred_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)

    __table_args__ = (
        Index(
            "ix_partner_outcomes_referral_id", "referral_id", postgresql_where=text("referral_id IS NOT NULL")
        ),
    )
