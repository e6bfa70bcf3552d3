"""Share-link redirects and click recording.

The redirect path never queries PostgreSQL when the link cache is warm: it reads what the link points
at from Redis (filled from the database on a miss), appends the click to a Redis stream, and answers
(one Redis call when warm: a script does both).
`flush_clicks` (run by the worker) moves clicks from the stream to the `clicks` table in batches:

    XAUTOCLAIM orphaned entries (or XREADGROUP new ones) -> resolve code and program (3 queries)
    -> one INSERT ... ON CONFLICT DO NOTHING -> COMMIT -> XACK + XDEL

A flusher that dies after reading leaves its entries pending in the consumer group; the next flush
claims them once they have been idle `click_claim_idle_seconds`. One that dies after the commit but
before the ack makes the next flush insert the same rows again, which the primary key (click id,
time) turns into no-ops. So every click is stored exactly once, whatever crashes."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import crawleruseragents
import orjson
import structlog
import uuid_utils
from redis.exceptions import NoScriptError, ResponseError
from sqlalchemy import ARRAY, Boolean, DateTime, LargeBinary, String, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from referloop.core.db import utcnow
from referloop.referrals.errors import LinkNotFound
from referloop.referrals.models import Click, Program
from referloop.referrals.service import cache
from referloop.referrals.service.campaigns import link_windows
from referloop.referrals.service.catalogue import visible_programs
from referloop.referrals.service.codes import code_key, keyed_hash, resolve_code, resolve_codes
from referloop.runtime import Runtime

log = structlog.get_logger(__name__)

STREAM = "referrals:clicks"
GROUP = "flushers"
# A click waiting in the stream is also kept under its id for an hour, so a sign-up that arrives
# before the next flush can still be attributed to it.
PENDING_CLICK_TTL_SECONDS = 3600
_CODE_RE = re.compile(r"^[A-Za-z0-9]{4,20}$")
_SHORT_RE = re.compile(r"^[A-Za-z0-9]{4,8}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_NOT_COUNTRIES = frozenset({"XX", "T1"})  # Cloudflare: unknown, Tor
_PARTITION_LOCK_KEY = 0x524C434C4B53  # "RLCLKS"


def pending_click_key(click_id: uuid.UUID | str) -> str:
    # In the click stream's Redis Cluster slot (see `cache`), written by the redirect's script.
    return f"{cache.SLOT_TAG}:click:{click_id}"


def _legacy_pending_click_key(click_id: uuid.UUID | str) -> str:
    """The name before the hash tag; such keys live on for up to an hour after a deploy."""
    return f"referrals:click:{click_id}"


@lru_cache(maxsize=8192)
def is_bot(user_agent: str | None) -> bool:
    """Known crawlers by user agent (the maintained crawler-user-agents patterns); no user agent at
    all is a script, not a browser. Cached: browsers send few distinct strings."""
    if not user_agent:
        return True
    return bool(crawleruseragents.is_crawler(user_agent))


def _country(value: str | None) -> str | None:
    if value:
        value = value.strip().upper()
        if _COUNTRY_RE.match(value) and value not in _NOT_COUNTRIES:
            return value
    return None


def with_params(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


# -- resolving a slug -----------------------------------------------------------------------------


def parse_slug(slug: str) -> tuple[str, str]:
    """(code key, program short code), both Crockford-normalized, or 404."""
    code, sep, short = slug.rpartition("-")
    if not sep or not _CODE_RE.match(code) or not _SHORT_RE.match(short):
        raise LinkNotFound("This link does not exist.")
    return code_key(code), code_key(short)


async def _load_program(rt: Runtime, short: str) -> bytes | None:
    async with rt.db.sessionmaker() as session:
        row = (await session.execute(visible_programs().where(Program.short_code == short))).first()
        if row is None:
            return None
        program = row[0]
        windows = await link_windows(
            session, [program.id], rt.settings.referral_attribution_window_days, utcnow()
        )
        return cache.program_value(program.id, program.landing_url, windows[program.id])


async def _load_code(rt: Runtime, key: str) -> bytes | None:
    async with rt.db.sessionmaker() as session:
        resolved = await resolve_code(session, key)
    return cache.code_value(resolved.member_id, resolved.code) if resolved else None


async def _fill(
    rt: Runtime, key: str, short: str, raw_code: bytes | None, raw_program: bytes | None
) -> tuple[bytes, bytes]:
    """Cache misses are loaded from the database (the only SQL a redirect can run) and cached."""
    ttl = rt.settings.referral_link_cache_ttl_seconds
    fill = rt.redis.pipeline(transaction=False)
    if raw_program is None:
        loaded = await _load_program(rt, short)
        raw_program = loaded or cache.NEGATIVE
        fill.set(cache.program_key(short), raw_program, ex=ttl if loaded else cache.NEGATIVE_TTL_SECONDS)
    if raw_code is None:
        loaded = await _load_code(rt, key)
        raw_code = loaded or cache.NEGATIVE
        fill.set(cache.code_key(key), raw_code, ex=ttl if loaded else cache.NEGATIVE_TTL_SECONDS)
    await fill.execute()
    return raw_code, raw_program


# -- following a link -----------------------------------------------------------------------------

# One call per warm redirect: both cache reads and, when the link credits someone, the click's XADD
# (one packed field) and its pending-click key. All four keys share the stream's Redis Cluster slot
# (see `cache`). Replies: {code, program, entry id} when the click was appended, else {code, program}
# (nil for a cache miss), and nothing was written.
_FOLLOW_SCRIPT = f"""
local code = redis.call('GET', KEYS[1])
local program = redis.call('GET', KEYS[2])
if code and program and code ~= '{cache.NEGATIVE.decode()}' and program ~= '{cache.NEGATIVE.decode()}' then
  local id = redis.call('XADD', KEYS[3], '*', 'c', ARGV[1])
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[4], ARGV[2], 'EX', ARGV[3])
  end
  return {{code, program, id}}
end
return {{code, program}}
"""
_FOLLOW_SHA = hashlib.sha1(_FOLLOW_SCRIPT.encode(), usedforsecurity=False).hexdigest()  # its EVALSHA name
_PENDING_TTL_ARG = str(PENDING_CLICK_TTL_SECONDS)
# Starlette's RedirectResponse quotes its URL with these characters left as they are; the location
# is quoted here (once per landing URL) so that the route can send it as it is.
_LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"
_UTM = ("utm_source", "utm_medium", "utm_campaign")
# The landing URL's own parameters that the redirect replaces: no code (utm only), a credited bot
# (and ref), a credited visitor (and rl_click), as `with_params` does.
_REPLACED = (frozenset(_UTM), frozenset((*_UTM, "ref")), frozenset((*_UTM, "ref", "rl_click")))
_NO_CODE, _CREDITED_BOT, _CREDITED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str  # the Location header's value, quoted as Starlette's RedirectResponse quotes it
    click_id: str | None  # set the cookie when present
    max_age_seconds: int


@lru_cache(maxsize=4096)
def _landing(raw_program: bytes, short: str, mode: int) -> tuple[str, str, int]:
    """(quoted URL up to the end of its query, with the utm parameters; quoted fragment or ""; cookie
    max-age): `with_params` of the landing URL split where `ref` and `rl_click` go, once per program
    entry instead of once per request."""
    program = orjson.loads(raw_program)
    parts = urlsplit(program["u"])
    replaced = _REPLACED[mode]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in replaced]
    query += [("utm_source", "referloop"), ("utm_medium", "referral"), ("utm_campaign", short)]
    head = urlunsplit(parts._replace(query=urlencode(query), fragment=""))
    tail = f"#{parts.fragment}" if parts.fragment else ""
    return quote(head, safe=_LOCATION_SAFE), quote(tail, safe=_LOCATION_SAFE), int(program["w"]) * 86400


@lru_cache(maxsize=16384)
def _ref_param(raw_code: bytes) -> str:
    return "&ref=" + quote_plus(orjson.loads(raw_code)["c"])


async def _follow(rt: Runtime, keys: tuple[str, str, str, str], packed: bytes, pending: bytes) -> list[Any]:
    args = (*keys, packed, pending, _PENDING_TTL_ARG)
    try:
        return await cast(Awaitable[list[Any]], rt.redis.evalsha(_FOLLOW_SHA, 4, *args))
    except NoScriptError:  # a restarted or new Redis: load it once, then it stays
        await rt.redis.script_load(_FOLLOW_SCRIPT)
        return await cast(Awaitable[list[Any]], rt.redis.evalsha(_FOLLOW_SHA, 4, *args))


async def _append(rt: Runtime, click_key: str, packed: bytes, pending: bytes) -> None:
    """The click of a link whose cache was cold (the script read a miss and wrote nothing)."""
    pipe = rt.redis.pipeline(transaction=False)
    pipe.xadd(STREAM, {"c": packed})
    if pending:
        pipe.set(click_key, pending, ex=PENDING_CLICK_TTL_SECONDS)
    await pipe.execute()


async def follow_link(
    rt: Runtime,
    slug: str,
    *,
    ip: str | None,
    user_agent: str | None,
    referer: str | None,
    country: str | None,
) -> Redirect:
    """Where `/r/{slug}` sends the visitor, with the click buffered in Redis (never PostgreSQL).

    One Redis call when the cache is warm (`_FOLLOW_SCRIPT`): the two cache reads, and the click's
    XADD and pending-click key when the link credits someone. The entry names the link (code, program
    short code), not who it resolves to: the flusher resolves it, by the same rules. A cold link is
    filled from the database, then its click appended. The entry is one field, `c`, a JSON array:
    [click id, ms since the epoch, code key, short code, ip hash hex, user agent, referer, country,
    bot 0/1] (None for what is unknown)."""
    key, short = parse_slug(slug)
    bot = is_bot(user_agent)
    click_id = str(uuid_utils.uuid7())
    now_ms = int(time.time() * 1000)
    packed = orjson.dumps(
        (
            click_id,
            now_ms,
            key,
            short,
            keyed_hash(rt, "ip", ip).hex() if ip else None,
            user_agent[:512] if user_agent else None,
            referer[:1024] if referer else None,
            _country(country) if country else None,
            1 if bot else 0,
        )
    )
    pending = b"" if bot else orjson.dumps({"k": key, "s": short, "t": now_ms})
    click_key = pending_click_key(click_id)
    reply = await _follow(
        rt, (cache.code_key(key), cache.program_key(short), STREAM, click_key), packed, pending
    )
    raw_code, raw_program = reply[0], reply[1]
    if len(reply) < 3:  # nothing appended: a cache miss, or a link that credits no one
        if raw_code is None or raw_program is None:
            raw_code, raw_program = await _fill(rt, key, short, raw_code, raw_program)
            if raw_code != cache.NEGATIVE and raw_program != cache.NEGATIVE:
                await _append(rt, click_key, packed, pending)
        if raw_program == cache.NEGATIVE:
            raise LinkNotFound("This link does not exist or its program is no longer offered.")
        if raw_code == cache.NEGATIVE:
            # The program exists but the code belongs to no one (revoked or mistyped): still take
            # the visitor there, crediting no one.
            head, tail, _ = _landing(raw_program, short, _NO_CODE)
            return Redirect(head + tail, None, 0)
    if bot:
        head, tail, max_age = _landing(raw_program, short, _CREDITED_BOT)
        return Redirect(head + _ref_param(raw_code) + tail, None, max_age)
    head, tail, max_age = _landing(raw_program, short, _CREDITED)
    return Redirect(f"{head}{_ref_param(raw_code)}&rl_click={click_id}{tail}", click_id, max_age)


# -- flushing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlushResult:
    read: int  # stream entries taken (new or reclaimed)
    inserted: int  # clicks newly stored (the rest were already stored by a flusher that died)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _ensure_group(rt: Runtime) -> None:
    try:
        await rt.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _take(
    rt: Runtime, count: int, idle_ms: int, consumer: str
) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    claimed = await rt.redis.xautoclaim(
        STREAM, GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
    )
    entries: list[tuple[bytes, dict[bytes, bytes] | None]] = list(claimed[1])
    if entries:
        return entries
    answer: Any = await rt.redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    return [e for _, stream_entries in answer for e in stream_entries] if answer else []


async def take_batch(
    rt: Runtime, count: int, *, idle_ms: int, consumer: str
) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """Entries to store: first those orphaned by a flusher that died, else new ones."""
    try:
        return await _take(rt, count, idle_ms, consumer)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        await _ensure_group(rt)
        return await _take(rt, count, idle_ms, consumer)


def _entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A stream entry as a row, except member_id, program_id and code, which `_resolve` fills in.
    Entries are one packed field `c` (see `follow_link`); those written before that change, which a
    deploy may leave in the stream, have one field per value."""
    packed = fields.get(b"c")
    if packed is not None:
        click_id, ms, key, short, ip_hash, user_agent, referer, country, bot = orjson.loads(packed)
        if not isinstance(key, str) or not isinstance(short, str):
            raise ValueError("code or short code is not a string")
        return {
            "id": uuid.UUID(click_id),
            "clicked_at": datetime.fromtimestamp(int(ms) / 1000, UTC),
            "key": key,
            "short": short,
            "ip_hash": bytes.fromhex(ip_hash) if ip_hash else None,
            "user_agent": user_agent or None,
            "referer": referer or None,
            "country": country or None,
            "is_bot": bool(bot),
        }
    f = {k.decode(): v.decode() for k, v in fields.items()}
    return {
        "id": uuid.UUID(f["i"]),
        "clicked_at": datetime.fromtimestamp(int(f["t"]) / 1000, UTC),
        "key": f["k"],
        "short": f["s"],
        "ip_hash": bytes.fromhex(f["h"]) if f.get("h") else None,
        "user_agent": f.get("a") or None,
        "referer": f.get("r") or None,
        "country": f.get("g") or None,
        "is_bot": f.get("b") == "1",
    }


async def _resolve(rt: Runtime, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Who and which program each click credits, by the redirect's rules (a code that resolves to a
    member, a program in the public catalogue), three queries per batch. Entries that resolve to no
    one were answered without attribution (or 404) and are not stored."""
    async with rt.db.sessionmaker() as session:
        codes = await resolve_codes(session, {e["key"] for e in entries})
        shorts = {e["short"] for e in entries}
        programs = dict(
            (short, pid)
            for pid, short in (
                await session.execute(
                    visible_programs()
                    .with_only_columns(Program.id, Program.short_code)
                    .where(Program.short_code.in_(shorts))
                )
            ).all()
        )
    rows = []
    for e in entries:
        owner, program_id = codes.get(e["key"]), programs.get(e["short"])
        if owner is None or program_id is None:
            continue
        row = {k: v for k, v in e.items() if k not in ("key", "short")}
        rows.append({**row, "program_id": program_id, "member_id": owner.member_id, "code": owner.code[:20]})
    return rows


_known_partitions: set[tuple[str, str]] = set()


def _partition_name(moment: datetime) -> str:
    return f"clicks_y{moment.year:04d}m{moment.month:02d}"


async def ensure_partitions(rt: Runtime, moments: Sequence[datetime]) -> None:
    """Monthly partitions of `clicks`, made on demand (under an advisory lock: flushers may race)."""
    url = str(rt.db.engine.url)
    wanted = {_partition_name(m): (m.year, m.month) for m in moments}
    missing = {n: ym for n, ym in wanted.items() if (url, n) not in _known_partitions}
    if not missing:
        return
    async with rt.db.engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PARTITION_LOCK_KEY})
        for name, (year, month) in sorted(missing.items()):
            nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
            # Names and bounds come from integers, never from input.
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF clicks FOR VALUES FROM "
                    f"('{year:04d}-{month:02d}-01 00:00:00+00') TO ('{nyear:04d}-{nmonth:02d}-01 00:00:00+00')"
                )
            )
    _known_partitions.update((url, n) for n in missing)


_INSERT = text(
    "INSERT INTO clicks (id, clicked_at, program_id, member_id, code, ip_hash, user_agent, referer, country, is_bot)"
    " SELECT * FROM unnest(:id, :clicked_at, :program_id, :member_id, :code, :ip_hash, :user_agent, :referer,"
    " :country, :is_bot)"
    " ON CONFLICT (id, clicked_at) DO NOTHING RETURNING id"
).bindparams(
    bindparam("id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("clicked_at", type_=ARRAY(DateTime(timezone=True))),
    bindparam("program_id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("member_id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("code", type_=ARRAY(String())),
    bindparam("ip_hash", type_=ARRAY(LargeBinary())),
    bindparam("user_agent", type_=ARRAY(String())),
    bindparam("referer", type_=ARRAY(String())),
    bindparam("country", type_=ARRAY(String())),
    bindparam("is_bot", type_=ARRAY(Boolean())),
)


async def store_clicks(rt: Runtime, rows: list[dict[str, Any]]) -> int:
    """One multi-row insert in its own transaction; returns how many rows were new."""
    if not rows:
        return 0
    await ensure_partitions(rt, [r["clicked_at"] for r in rows])
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    async with rt.db.sessionmaker() as session, session.begin():
        inserted = len((await session.execute(_INSERT, columns)).all())
    return inserted


async def ack(rt: Runtime, entry_ids: Sequence[bytes]) -> None:
    if entry_ids:
        pipe = rt.redis.pipeline(transaction=True)
        pipe.xack(STREAM, GROUP, *entry_ids)
        pipe.xdel(STREAM, *entry_ids)
        await pipe.execute()


async def flush_clicks(
    rt: Runtime,
    max_batch: int | None = None,
    *,
    claim_idle_seconds: float | None = None,
    consumer: str | None = None,
) -> FlushResult:
    """Store one batch of buffered clicks in PostgreSQL. Call it in a loop (see the worker); it
    returns `read == 0` when the stream is drained."""
    count = max_batch or rt.settings.click_flush_batch_size
    idle = rt.settings.click_claim_idle_seconds if claim_idle_seconds is None else claim_idle_seconds
    entries = await take_batch(
        rt, count, idle_ms=int(idle * 1000), consumer=consumer or default_consumer_name()
    )
    if not entries:
        return FlushResult(0, 0)
    parsed: list[dict[str, Any]] = []
    seen: set[uuid.UUID] = set()
    for entry_id, fields in entries:
        if not fields:
            continue  # deleted while pending (a link that credited no one)
        try:
            entry = _entry(fields)
        except (KeyError, ValueError, TypeError, UnicodeDecodeError):
            log.warning("click_entry_malformed", entry_id=entry_id.decode(errors="replace"))
            continue  # acked below: a malformed entry would otherwise block the stream forever
        if entry["id"] not in seen:  # one statement cannot insert the same key twice
            seen.add(entry["id"])
            parsed.append(entry)
    inserted = await store_clicks(rt, await _resolve(rt, parsed) if parsed else [])
    await ack(rt, [entry_id for entry_id, _ in entries])
    return FlushResult(len(entries), inserted)


async def flush_all_clicks(rt: Runtime, max_batch: int | None = None, **kwargs: Any) -> FlushResult:
    """Flush until the stream has nothing left to take (tests, shutdown, the CLI)."""
    read = inserted = 0
    while True:
        result = await flush_clicks(rt, max_batch, **kwargs)
        read, inserted = read + result.read, inserted + result.inserted
        if result.read == 0:
            return FlushResult(read, inserted)


# -- reading clicks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClickFact:
    id: uuid.UUID
    member_id: uuid.UUID
    program_id: uuid.UUID
    clicked_at: datetime
    is_bot: bool


async def find_click(session: AsyncSession, rt: Runtime, click_id: uuid.UUID) -> ClickFact | None:
    """A stored click, or one still waiting in Redis for the next flush."""
    row = (
        await session.execute(
            select(Click.member_id, Click.program_id, Click.clicked_at, Click.is_bot).where(
                Click.id == click_id
            )
        )
    ).first()
    if row is not None:
        return ClickFact(click_id, row[0], row[1], row[2], row[3])
    pending = await rt.redis.get(pending_click_key(click_id))
    if pending is None:
        pending = await rt.redis.get(_legacy_pending_click_key(click_id))
        if pending is None:
            return None
    data = orjson.loads(pending)
    owner = await resolve_code(session, data["k"])
    program_id = await session.scalar(select(Program.id).where(Program.short_code == data["s"]))
    if owner is None or program_id is None:
        return None
    return ClickFact(
        click_id, owner.member_id, program_id, datetime.fromtimestamp(int(data["t"]) / 1000, UTC), False
    )


@dataclass(frozen=True, slots=True)
class ClickCounts:
    human: int
    bot: int


async def click_counts(
    session: AsyncSession, *, program_id: uuid.UUID | None = None, member_id: uuid.UUID | None = None
) -> ClickCounts:
    """Stored clicks, humans and bots apart (analytics serve rollups; this is for staff and tests)."""
    stmt = select(func.count().filter(Click.is_bot.is_(False)), func.count().filter(Click.is_bot.is_(True)))
    if program_id is not None:
        stmt = stmt.where(Click.program_id == program_id)
    if member_id is not None:
        stmt = stmt.where(Click.member_id == member_id)
    human, bot = (await session.execute(stmt)).one()
    return ClickCounts(int(human), int(bot))
