"""`referloop seed-demo`: a small living system for `make run`. Safe to run twice.

Each domain adds a step here; steps skip what already exists."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.identity.models import Role, User
from referloop.identity.service.accounts import create_user
from referloop.runtime import Runtime

DEMO_PASSWORD = "demo-password-not-for-production"  # noqa: S105 - printed to the developer on purpose
DEMO_MEMBERS = [
    ("asha@demo.referloop.dev", "+919812340001", "Asha Rao"),
    ("bilal@demo.referloop.dev", "+919812340002", "Bilal Khan"),
    ("chen@demo.referloop.dev", None, "Chen Wei"),
    ("dara@demo.referloop.dev", None, "Dara Okafor"),
]
DEMO_STAFF = [
    ("admin@demo.referloop.dev", Role.admin, "Demo Admin"),
    ("finance@demo.referloop.dev", Role.finance, "Demo Finance"),
    ("support@demo.referloop.dev", Role.support, "Demo Support"),
]

SeedStep = Callable[[AsyncSession, Runtime], Awaitable[list[str]]]


async def seed_identity(session: AsyncSession, rt: Runtime) -> list[str]:
    lines = []
    people = [(e, p, n, Role.member) for e, p, n in DEMO_MEMBERS] + [(e, None, n, r) for e, r, n in DEMO_STAFF]
    inviter_code: str | None = None
    for email, phone, name, role in people:
        user = await session.scalar(select(User).where(User.email == email, User.deleted_at.is_(None)))
        if user is None:
            user = await create_user(session, rt, email=email, phone=phone, password=DEMO_PASSWORD,
                                     display_name=name, role=role,
                                     invited_with_code=inviter_code if role is Role.member else None)
            lines.append(f"created {role.value:8} {email}")
        if inviter_code is None and role is Role.member:
            inviter_code = user.referral_code
    return lines


SEED_STEPS: list[SeedStep] = [seed_identity]


async def seed_demo(rt: Runtime) -> list[str]:
    lines: list[str] = []
    async with rt.db.sessionmaker() as session, session.begin():
        for step in SEED_STEPS:
            lines += await step(session, rt)
    lines.append(f"every demo account's password: {DEMO_PASSWORD} (staff enrol TOTP at first sign-in)")
    return lines
