"""Redis cache of what a share link points at, so the redirect never queries PostgreSQL when warm.

Two small entries per link instead of one per slug, so that a change invalidates exactly one key:
`code -> (member id, display code)` and `program short code -> (program id, landing URL, window)`.
Unknown or retired targets are cached as a negative entry for a short time. Writers delete the key
in their transaction (before commit), so a redirect racing the commit can re-cache the old value for
at most the TTL; that bound is accepted for links (nothing about money depends on it).

The keys carry the hash tag `{referrals:clicks}`: on a Redis Cluster they live in the slot of the
click stream (`referrals:clicks`, whose whole name is its own tag), so that the redirect's one script
may read them and append the click in a single call. Every redirect writes to the stream's slot in
any case, so this moves no load to another node. The names before that change (`referrals:link:...`)
are still deleted on invalidation while processes of the previous release may be reading them."""

from __future__ import annotations

import uuid

import orjson

from referloop.runtime import Runtime

NEGATIVE = b"-"
NEGATIVE_TTL_SECONDS = 30
# The click stream's name as a hash tag (see the module docstring and `clicks.STREAM`).
SLOT_TAG = "{referrals:clicks}"


def code_key(code_key_: str) -> str:
    return f"{SLOT_TAG}:link:code:{code_key_}"


def program_key(short_code: str) -> str:
    return f"{SLOT_TAG}:link:program:{short_code}"


def _legacy_code_key(code_key_: str) -> str:
    return f"referrals:link:code:{code_key_}"


def _legacy_program_key(short_code: str) -> str:
    return f"referrals:link:program:{short_code}"


def program_value(program_id: uuid.UUID, landing_url: str, window_days: int) -> bytes:
    return orjson.dumps({"p": str(program_id), "u": landing_url, "w": window_days})


def code_value(member_id: uuid.UUID, code: str) -> bytes:
    return orjson.dumps({"m": str(member_id), "c": code})


async def _delete(rt: Runtime, keys: list[str]) -> None:
    # One DEL per key in a pipeline (not one multi-key DEL): keys of different Redis Cluster slots.
    if keys:
        pipe = rt.redis.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        await pipe.execute()


async def invalidate_codes(rt: Runtime, *code_keys: str) -> None:
    await _delete(rt, [f(k) for k in code_keys for f in (code_key, _legacy_code_key)])


async def invalidate_programs(rt: Runtime, *short_codes: str) -> None:
    await _delete(rt, [f(s) for s in short_codes for f in (program_key, _legacy_program_key)])
