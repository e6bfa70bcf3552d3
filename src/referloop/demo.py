"""`referloop seed-demo`: a small living system for `make run`. Safe to run twice.

Each domain adds a step here; steps skip what already exists."""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.config import Environment
from referloop.core.context import RequestContext
from referloop.core.db import utcnow
from referloop.core.ids import uuid7
from referloop.identity.models import Role, User
from referloop.identity.service.accounts import create_user
from referloop.identity.service.sessions import Principal
from referloop.identity.service.staff import set_level
from referloop.referrals.lifecycle.models import Referral, ReferralState
from referloop.referrals.models import Program, University
from referloop.runtime import Runtime

DEMO_PASSWORD = "demo-password-not-for-production"  # noqa: S105 - printed to the developer on purpose
# email, phone, name, member level (campaigns can require a minimum level)
DEMO_MEMBERS = [
    ("asha@demo.referloop.dev", "+919812340001", "Asha Rao", 3),
    ("bilal@demo.referloop.dev", "+919812340002", "Bilal Khan", 2),
    ("chen@demo.referloop.dev", None, "Chen Wei", 1),
    ("dara@demo.referloop.dev", None, "Dara Okafor", 1),
]
DEMO_STAFF = [
    ("admin@demo.referloop.dev", Role.admin, "Demo Admin"),
    ("finance@demo.referloop.dev", Role.finance, "Demo Finance"),
    ("support@demo.referloop.dev", Role.support, "Demo Support"),
]

SEED_CONTEXT = RequestContext(user_agent="referloop seed-demo")

SeedStep = Callable[[AsyncSession, Runtime], Awaitable[list[str]]]


async def seed_identity(session: AsyncSession, rt: Runtime) -> list[str]:
    lines = []
    people = [(e, p, n, Role.member) for e, p, n, _ in DEMO_MEMBERS] + [
        (e, None, n, r) for e, r, n in DEMO_STAFF
    ]
    inviter_code: str | None = None
    for email, phone, name, role in people:
        user = await session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))
        if user is None:
            user = await create_user(
                session,
                rt,
                email=email,
                phone=phone,
                password=DEMO_PASSWORD,
                display_name=name,
                role=role,
                invited_with_code=inviter_code if role is Role.member else None,
            )
            lines.append(f"created {role.value:8} {email}")
        if inviter_code is None and role is Role.member:
            inviter_code = user.referral_code
    admin = await _demo_admin(session)
    for email, _, _, level in DEMO_MEMBERS:
        member = await session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))
        if member is not None and member.level != level:
            await set_level(session, admin, member.id, level, SEED_CONTEXT)  # audited, as staff would
            lines.append(f"set level {level}        {email}")
    return lines


class DemoRefused(Exception):
    """seed-demo in production: it makes staff accounts whose password is in this file."""


async def seed_demo(rt: Runtime) -> list[str]:
    if rt.settings.env is Environment.production:
        raise DemoRefused(
            "seed-demo refuses to run in production: it creates admin, finance and support accounts "
            "with a published password, real-looking catalogue entries and releases wallet money"
        )
    lines: list[str] = []
    async with rt.db.sessionmaker() as session, session.begin():
        for step in SEED_STEPS:
            lines += await step(session, rt)
    for after in AFTER_COMMIT_STEPS:
        lines += await after(rt)
    lines.append(f"every demo account's password: {DEMO_PASSWORD} (staff enrol TOTP at first sign-in)")
    return lines


# -- referrals: universities, programs, a campaign with reward rules, referrals in every state --------

DEMO_UNIVERSITIES = [
    (
        "demo-lakeside",
        "Lakeside University",
        [
            ("bsc-computer-science", "BSc Computer Science", "undergraduate", 45_000_000),
            ("mba", "MBA", "postgraduate", 120_000_000),
        ],
    ),
    (
        "demo-northgate",
        "Northgate Institute of Technology",
        [
            ("diploma-data-science", "Diploma in Data Science", "diploma", 15_000_000),
            ("certificate-cloud", "Certificate in Cloud Computing", "certificate", 5_000_000),
        ],
    ),
]
DEMO_CAMPAIGN = "Demo launch campaign"
# Each lead is invited by the first demo member, then taken to one state, through the services a
# request, a partner report, the worker or a staff member would use.
DEMO_LEADS = [
    ("Ravi Kumar", "ravi.lead@demo.referloop.dev", "invited"),
    ("Meera Iyer", "meera.lead@demo.referloop.dev", "signed_up"),
    ("Arjun Das", "arjun.lead@demo.referloop.dev", "applied"),
    ("Fatima Noor", "fatima.lead@demo.referloop.dev", "enrolled"),
    ("Kabir Shah", "kabir.lead@demo.referloop.dev", "rewarded"),
    ("Lena Roy", "lena.lead@demo.referloop.dev", "rejected"),
    ("Omar Ali", "omar.lead@demo.referloop.dev", "expired"),
    ("Priya Nair", "priya.lead@demo.referloop.dev", "reversed"),
    ("Sam Joseph", "sam.lead@demo.referloop.dev", "fraud_hold"),
]
DEMO_CLICK_DAYS = 14


async def _demo_admin(session: AsyncSession) -> Principal:
    admin_email = next(e for e, r, _ in DEMO_STAFF if r is Role.admin)
    admin = await session.scalar(select(User).where(User.email == admin_email, User.deleted_at.is_(None)))
    assert admin is not None, "seed_identity runs first"
    return Principal(user_id=admin.id, session_id=uuid7(), role=Role.admin.value, mfa=True)


async def _demo_catalogue(
    session: AsyncSession, actor: Principal, lines: list[str]
) -> dict[str, tuple[Program, University]]:
    from referloop.referrals.schemas import Money, ProgramCreate, UniversityCreate
    from referloop.referrals.service import catalogue

    programs: dict[str, tuple[Program, University]] = {}
    for slug, name, offered in DEMO_UNIVERSITIES:
        university = await session.scalar(
            select(University).where(University.slug == slug, University.deleted_at.is_(None))
        )
        if university is None:
            university = await catalogue.create_university(
                session,
                actor,
                UniversityCreate(
                    name=name, slug=slug, country="IN", website_url=f"https://{slug}.example.edu"
                ),
                SEED_CONTEXT,
            )
            lines.append(f"created university {slug}")
        for pslug, pname, level, fee in offered:
            program = await session.scalar(
                select(Program).where(
                    Program.university_id == university.id,
                    Program.slug == pslug,
                    Program.deleted_at.is_(None),
                )
            )
            if program is None:
                program, _ = await catalogue.create_program(
                    session,
                    actor,
                    ProgramCreate(
                        university_id=university.id,
                        name=pname,
                        slug=pslug,
                        level=level,
                        intakes=[date(2027, 7, 1), date(2028, 1, 1)],
                        fee=Money(amount=fee, currency="INR"),
                        description=f"{pname} at {name} (demo data).",
                        landing_url=f"https://{slug}.example.edu/programs/{pslug}",
                    ),
                    SEED_CONTEXT,
                )
                lines.append(f"created program    {slug}/{pslug}")
            programs[pslug] = (program, university)
    return programs


async def _demo_campaign(
    session: AsyncSession, rt: Runtime, actor: Principal, program_ids: list[uuid.UUID], lines: list[str]
) -> None:
    from referloop.referrals.models import Campaign, CampaignState
    from referloop.referrals.rewards.schemas import RuleCreate
    from referloop.referrals.rewards.service.rules import create_rule
    from referloop.referrals.schemas import CampaignCreate, Money
    from referloop.referrals.service import campaigns

    if await session.scalar(select(Campaign.id).where(Campaign.name == DEMO_CAMPAIGN)) is not None:
        return
    campaign, _ = await campaigns.create_campaign(
        session,
        rt,
        actor,
        CampaignCreate(
            name=DEMO_CAMPAIGN,
            description="Demo data: referrers earn when the people they refer apply and enrol.",
            program_ids=program_ids,
            starts_at=utcnow() - timedelta(days=DEMO_CLICK_DAYS + 1),
            currency="INR",
            budget_total=Money(amount=50_000_000, currency="INR"),
        ),
        SEED_CONTEXT,
    )
    inr = {"currency": "INR"}
    for rule in (
        {"milestone": "applied", "role": "referrer", "amount": {"amount": 10_000, **inr}, "hold_days": 7},
        {"milestone": "enrolled", "role": "referrer", "amount": {"amount": 100_000, **inr}, "hold_days": 30},
        {"milestone": "enrolled", "role": "referee", "amount": {"amount": 50_000, **inr}, "hold_days": 30},
    ):
        await create_rule(
            session, actor, campaign.id, RuleCreate.model_validate({"kind": "fixed", **rule}), SEED_CONTEXT
        )
    await campaigns.transition_campaign(session, rt, actor, campaign.id, CampaignState.active, SEED_CONTEXT)
    lines.append(f"created campaign   {DEMO_CAMPAIGN} (active, 3 reward rules)")


async def _outcome(
    session: AsyncSession, rt: Runtime, referral: Referral, kind: str, program: Program
) -> None:
    from referloop.referrals.lifecycle.service.outcomes import (
        OutcomeKind,
        OutcomeReport,
        apply_partner_outcome,
    )

    result = await apply_partner_outcome(
        session,
        rt,
        OutcomeReport(
            university_id=program.university_id,
            kind=OutcomeKind(kind),
            occurred_at=utcnow(),
            external_ref=f"demo-{referral.id}-{kind}",
            referral_id=referral.id,
            fee_amount=program.fee_amount if kind == "enrolled" else None,
            fee_currency=program.fee_currency if kind == "enrolled" else None,
        ),
        SEED_CONTEXT,
    )
    assert result.status == "applied", result


async def _demo_signup(session: AsyncSession, rt: Runtime, name: str, email: str, referrer: User) -> None:
    """The lead registers with the referrer's code; attribution and the lifecycle's consumer run as
    the worker would run them (the worker's later pass finds the work done)."""
    from referloop.core.outbox.models import OutboxEvent
    from referloop.referrals.lifecycle.service.signups import on_signup_attributed
    from referloop.referrals.service.attribution import ATTRIBUTED_TOPIC, attribute_signup

    user = await create_user(
        session,
        rt,
        email=email,
        phone=None,
        password=DEMO_PASSWORD,
        display_name=name,
        invited_with_code=referrer.referral_code,
    )
    await attribute_signup(session, rt, user, referrer.referral_code, None, None)
    event = await session.scalar(
        select(OutboxEvent).where(
            OutboxEvent.topic == ATTRIBUTED_TOPIC, OutboxEvent.payload["referee_id"].astext == str(user.id)
        )
    )
    assert event is not None
    await on_signup_attributed(session, rt, dict(event.payload))


async def _demo_referral(
    session: AsyncSession,
    rt: Runtime,
    actor: Principal,
    referrer: User,
    program: Program,
    lead: tuple[str, str, str],
) -> None:
    from referloop.referrals.lifecycle.schemas import InviteRequest
    from referloop.referrals.lifecycle.service import states
    from referloop.referrals.lifecycle.service.invites import invite
    from referloop.referrals.lifecycle.service.staff import place_fraud_hold
    from referloop.referrals.rewards.service import grant, jobs, settle

    name, email, target = lead
    referral = await invite(
        session, rt, referrer.id, InviteRequest(program_id=program.id, name=name, email=email), SEED_CONTEXT
    )
    if target == "signed_up":
        await _demo_signup(session, rt, name, email, referrer)
    if target in ("applied", "enrolled", "rewarded", "rejected", "reversed", "fraud_hold"):
        await _outcome(session, rt, referral, "application_submitted", program)
    if target in ("enrolled", "rewarded", "reversed"):
        await _outcome(session, rt, referral, "enrolled", program)
    if target == "rewarded":
        # The worker grants the queued rewards, and releases them once the hold is over: done now,
        # with the release clock moved past the hold.
        for reward_id in await jobs.queued_rewards(session, 10, [referral.id]):
            await grant.grant(session, reward_id)
            await settle.release(session, reward_id, now=utcnow() + timedelta(days=31))
    if target == "rejected":
        await _outcome(session, rt, referral, "application_rejected", program)
    if target == "reversed":
        await _outcome(session, rt, referral, "enrolment_cancelled", program)
    if target == "expired":
        locked = await states.lock_referral(session, referral.id)
        await states.transition(
            session,
            locked,
            ReferralState.expired,
            actor=states.SYSTEM,
            reason="the invitation's window passed",
        )
    if target == "fraud_hold":
        await place_fraud_hold(
            session, actor, referral.id, "demo: the same device as the referrer", SEED_CONTEXT
        )


async def seed_clicks(rt: Runtime) -> list[str]:
    """Two weeks of share-link clicks (a few by bots) on the demo programs, stored as the click
    flusher stores them. Runs after the seed's commit: the click job joins the programs."""
    from referloop.analytics.service.clicks import recount_clicks
    from referloop.referrals.service.clicks import click_counts, store_clicks

    async with rt.db.sessionmaker() as session:
        referrer = await session.scalar(select(User).where(User.email == DEMO_MEMBERS[0][0]))
        programs = list(
            await session.scalars(
                select(Program)
                .join(University, University.id == Program.university_id)
                .where(University.slug.in_([u[0] for u in DEMO_UNIVERSITIES]), Program.deleted_at.is_(None))
                .order_by(Program.slug)
            )
        )
        if referrer is None or not programs:
            return []
        counts = await click_counts(session, member_id=referrer.id)
    if counts.human or counts.bot:
        return []
    rng = random.Random(5)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for day in range(DEMO_CLICK_DAYS, -1, -1):
        for _ in range(rng.randint(2, 9)):
            bot = rng.random() < 0.1
            rows.append(
                {
                    "id": uuid7(),
                    "clicked_at": now - timedelta(days=day, minutes=rng.randint(1, 600)),
                    "program_id": rng.choice(programs).id,
                    "member_id": referrer.id,
                    "code": referrer.referral_code,
                    "ip_hash": None,
                    "user_agent": "Googlebot/2.1" if bot else "Mozilla/5.0 (demo)",
                    "referer": "https://wa.me/",
                    "country": "IN",
                    "is_bot": bot,
                }
            )
    stored = await store_clicks(rt, rows)
    # Clicks stored below the click job's watermark (a worker ran before the seed) are counted by
    # the recount; with no watermark yet, the job starts at the oldest click and counts them all.
    await recount_clicks(rt, days=DEMO_CLICK_DAYS + 1)
    return [f"created clicks     {stored} over {DEMO_CLICK_DAYS} days for {referrer.email}"]


async def seed_referrals(session: AsyncSession, rt: Runtime) -> list[str]:
    from referloop.referrals.lifecycle.service.leads import email_index

    lines: list[str] = []
    actor = await _demo_admin(session)
    programs = await _demo_catalogue(session, actor, lines)
    await _demo_campaign(session, rt, actor, [p.id for p, _ in programs.values()], lines)
    referrer = await session.scalar(select(User).where(User.email == DEMO_MEMBERS[0][0]))
    assert referrer is not None
    program_list = [p for p, _ in programs.values()]
    for i, lead in enumerate(DEMO_LEADS):
        taken = await session.scalar(
            select(Referral.id).where(Referral.email_index == email_index(rt, lead[1])).limit(1)
        )
        if taken is None:
            await _demo_referral(session, rt, actor, referrer, program_list[i % len(program_list)], lead)
            lines.append(f"created referral   {lead[2]:10} {lead[1]}")
    return lines


SEED_STEPS: list[SeedStep] = [seed_identity, seed_referrals]
# Steps that need the seed committed first (each runs its own transactions).
AFTER_COMMIT_STEPS: list[Callable[[Runtime], Awaitable[list[str]]]] = [seed_clicks]
