"""`GET /r/{slug}`: the redirect, its cookie, no database on the hot path, and exactly-once clicks."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from redis.crc import key_slot
from sqlalchemy import event
from starlette.responses import RedirectResponse, Response

from referloop.referrals.routes import _click_cookie_suffix
from referloop.referrals.service import cache, clicks
from referloop.referrals.service.clicks import GROUP, STREAM, click_counts, flush_all_clicks, flush_clicks
from referloop.runtime import Runtime
from tests.factories import register_member
from tests.referrals.helpers import (
    BOT_UA,
    BROWSER_UA,
    Admin,
    create_campaign,
    create_program,
    create_university,
    sql,
)


@contextmanager
def count_queries(rt: Runtime) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(rt.db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(rt.db.engine.sync_engine, "before_cursor_execute", before)


@pytest.fixture
async def link(client: httpx.AsyncClient, admin: Admin) -> dict[str, Any]:
    uni = await create_university(client, admin)
    program = await create_program(client, admin, uni["id"])
    member = await register_member(client)
    r = await client.get("/v1/referrals/links", params={"limit": 200}, headers=member.auth)
    item = next(i for i in r.json()["items"] if i["program_id"] == program["id"])
    return {"program": program, "member": member, "slug": item["slug"], "code": item["code"]}


async def stored(rt: Runtime, program_id: str) -> list[dict[str, Any]]:
    async with rt.db.sessionmaker() as session:
        counts = await click_counts(session, program_id=uuid.UUID(program_id))
    rows = await sql(
        rt,
        "SELECT id, is_bot, member_id, country, ip_hash, user_agent, referer FROM clicks"
        " WHERE program_id = :p",
        p=program_id,
    )
    assert counts.human + counts.bot == len(rows)
    return rows


async def test_redirect_answers_302_with_attribution_params_and_cookie(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    r = await client.get(
        f"/r/{link['slug']}",
        headers={"User-Agent": BROWSER_UA, "Referer": "https://wa.me/", "CF-IPCountry": "in"},
    )
    assert r.status_code == 302
    location = urlsplit(r.headers["location"])
    landing = urlsplit(link["program"]["landing_url"])
    assert (location.scheme, location.netloc, location.path) == (landing.scheme, landing.netloc, landing.path)
    params = parse_qs(location.query)
    click_id = params["rl_click"][0]
    assert params["lang"] == ["en"]  # the landing URL's own parameters are kept
    assert params["utm_source"] == ["referloop"] and params["utm_medium"] == ["referral"]
    assert params["ref"] == [link["code"]]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"rl_click={click_id};")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert f"Max-Age={30 * 86400}" in cookie
    assert r.headers["cache-control"] == "no-store"

    await flush_all_clicks(runtime)
    (row,) = await stored(runtime, link["program"]["id"])
    assert str(row["id"]) == click_id and str(row["member_id"]) == link["member"].id
    assert row["country"] == "IN" and row["referer"] == "https://wa.me/" and row["user_agent"] == BROWSER_UA
    assert len(row["ip_hash"]) == 32 and not row["is_bot"]


async def test_cookie_lives_as_long_as_the_longest_live_campaign_window(
    client: httpx.AsyncClient, admin: Admin, link: dict[str, Any]
):
    await create_campaign(client, admin, [link["program"]["id"]], attribution_window_days=45)
    r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
    assert f"Max-Age={45 * 86400}" in r.headers["set-cookie"]


async def test_warm_redirect_never_queries_postgresql(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    # Listing the links warmed the cache (fixture). Now 20 visits: not one SQL statement.
    with count_queries(runtime) as statements:
        for _ in range(20):
            r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
            assert r.status_code == 302
    assert statements == []

    # A cold cache is filled once from the database, then the next visit is free again.
    code, short = clicks.parse_slug(link["slug"])
    await runtime.redis.delete(cache.code_key(code), cache.program_key(short))
    with count_queries(runtime) as cold:
        assert (await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})).status_code == 302
    assert cold
    with count_queries(runtime) as warm:
        assert (await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})).status_code == 302
    assert warm == []


async def test_every_redirect_is_counted_exactly_once_after_the_flush(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    # 40 at a time: the shared Redis client refuses a 101st concurrent connection (redis-py 8 default).
    gate = asyncio.Semaphore(40)

    async def visit(i: int) -> str:
        async with gate:
            r = await client.get(
                f"/r/{link['slug']}",
                headers={"User-Agent": BROWSER_UA, "X-Forwarded-For": f"10.9.{i % 250}.{i % 200 + 1}"},
            )
        assert r.status_code == 302
        return parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0]

    sent = await asyncio.gather(*(visit(i) for i in range(120)))
    await flush_all_clicks(runtime, max_batch=25)
    await flush_all_clicks(runtime, max_batch=25)  # a second flush finds nothing more to add
    rows = await stored(runtime, link["program"]["id"])
    assert sorted(str(r["id"]) for r in rows) == sorted(sent)


async def test_a_flusher_dying_after_reading_loses_nothing(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    await flush_all_clicks(runtime)  # start from an empty stream
    sent = []
    for _ in range(30):
        r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
        sent.append(parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0])
    # A flusher reads a batch and dies before storing it: the entries stay pending for its name.
    taken = await clicks.take_batch(runtime, 20, idle_ms=10**9, consumer="crashed-worker")
    assert len(taken) == 20
    # Another flusher claims orphaned entries once idle long enough (0 here) and stores them.
    await flush_all_clicks(runtime, claim_idle_seconds=0)
    rows = await stored(runtime, link["program"]["id"])
    assert sorted(str(r["id"]) for r in rows) == sorted(sent)
    pending = await runtime.redis.xpending(STREAM, GROUP)
    assert pending["pending"] == 0


async def test_a_flusher_dying_between_commit_and_ack_stores_each_click_once(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    await flush_all_clicks(runtime)
    sent = []
    for _ in range(15):
        r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
        sent.append(parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0])

    async def die(*_: Any) -> None:
        raise ConnectionError("worker killed after COMMIT, before XACK")

    monkeypatch.setattr(clicks, "ack", die)
    with pytest.raises(ConnectionError):
        await flush_clicks(runtime, 100, claim_idle_seconds=0, consumer="doomed")
    assert len(await stored(runtime, link["program"]["id"])) == 15  # committed, not acknowledged
    monkeypatch.undo()

    result = await flush_all_clicks(runtime, claim_idle_seconds=0)
    assert result.read >= 15 and result.inserted == 0  # replayed, not duplicated
    rows = await stored(runtime, link["program"]["id"])
    assert sorted(str(r["id"]) for r in rows) == sorted(sent)


async def test_bots_are_counted_apart_and_get_no_click_id(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    for ua in (BOT_UA, "curl/8.5.0", None):
        headers = {"User-Agent": ua} if ua else {}
        r = await client.get(f"/r/{link['slug']}", headers=headers)
        if ua is None:
            r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": ""})
        assert r.status_code == 302
        assert "rl_click" not in r.headers["location"] and "set-cookie" not in r.headers
    await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
    await flush_all_clicks(runtime)
    async with runtime.db.sessionmaker() as session:
        counts = await click_counts(session, program_id=uuid.UUID(link["program"]["id"]))
    assert (counts.human, counts.bot) == (1, 4)  # the None case sent httpx's own UA, then an empty one


async def test_unknown_or_retired_links_answer_404(
    client: httpx.AsyncClient, admin: Admin, link: dict[str, Any], runtime: Runtime
):
    for slug in ("nothing", "abc-def", "ZZZZZZZZ-ZZZZZZ", "x" * 30 + "-ABCDEF", "bad!code-ABCDEF"):
        r = await client.get(f"/r/{slug}", headers={"User-Agent": BROWSER_UA})
        assert r.status_code == 404, slug
    assert (
        await client.delete(f"/v1/staff/programs/{link['program']['id']}", headers=admin.auth)
    ).status_code == 200
    r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    await flush_all_clicks(runtime)
    assert await stored(runtime, link["program"]["id"]) == []


async def test_a_cold_link_is_filled_once_and_its_click_counted_once(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    await flush_all_clicks(runtime)
    code, short = clicks.parse_slug(link["slug"])
    await runtime.redis.delete(cache.code_key(code), cache.program_key(short))
    sent = []
    for _ in range(2):  # cold, then warm
        r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
        assert r.status_code == 302
        sent.append(parse_qs(urlsplit(r.headers["location"]).query)["rl_click"][0])
    await flush_all_clicks(runtime)
    rows = await stored(runtime, link["program"]["id"])
    assert sorted(str(r["id"]) for r in rows) == sorted(sent)


async def test_an_unknown_code_on_a_live_program_redirects_crediting_no_one(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    await flush_all_clicks(runtime)
    short = link["slug"].rpartition("-")[2]
    for _ in range(2):  # the second visit reads the negative entry from the cache
        r = await client.get(f"/r/ZZZZ9999ZZ-{short}", headers={"User-Agent": BROWSER_UA})
        assert r.status_code == 302
        params = parse_qs(urlsplit(r.headers["location"]).query)
        assert params["utm_campaign"] == [short] and "ref" not in params and "rl_click" not in params
        assert "set-cookie" not in r.headers
    bad_key = clicks.parse_slug(f"ZZZZ9999ZZ-{short}")[0]
    entries = await runtime.redis.xrange(STREAM)
    assert not [e for _, e in entries if bad_key in e.get(b"c", b"").decode()]  # nothing buffered
    await flush_all_clicks(runtime)
    assert await stored(runtime, link["program"]["id"]) == []


async def test_entries_and_pending_clicks_of_the_previous_format_are_still_read(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    """After a deploy, the stream may still hold entries with one field per value, and pending
    clicks under the name without the hash tag."""
    await flush_all_clicks(runtime)
    code, short = clicks.parse_slug(link["slug"])
    click_id = uuid.uuid4()
    # A recent time: the analytics rollup of later tests starts from the oldest stored click.
    clicked_ms = int(time.time() * 1000) - 1000
    await runtime.redis.xadd(
        STREAM,
        {
            "i": str(click_id),
            "t": str(clicked_ms),
            "k": code,
            "s": short,
            "h": "ab" * 32,
            "a": BROWSER_UA,
            "r": "",
            "g": "IN",
            "b": "0",
        },
    )
    await runtime.redis.set(
        f"referrals:click:{click_id}", orjson.dumps({"k": code, "s": short, "t": clicked_ms}), ex=60
    )
    async with runtime.db.sessionmaker() as session:
        pending = await clicks.find_click(session, runtime, click_id)
    assert pending is not None and str(pending.member_id) == link["member"].id and not pending.is_bot

    await flush_all_clicks(runtime)
    (row,) = await stored(runtime, link["program"]["id"])
    assert row["id"] == click_id and row["country"] == "IN" and row["referer"] is None
    assert row["ip_hash"] == bytes.fromhex("ab" * 32) and row["user_agent"] == BROWSER_UA


async def test_a_malformed_packed_entry_is_skipped_not_stuck(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime
):
    await flush_all_clicks(runtime)
    bad_ids = [
        await runtime.redis.xadd(STREAM, {"c": bad})
        for bad in (b"not json", b"[1, 2]", b'["x", "y", 1, 2, null, null, null, null, 0]')
    ]
    r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
    assert r.status_code == 302
    await flush_all_clicks(runtime)
    assert len(await stored(runtime, link["program"]["id"])) == 1
    for entry_id in bad_ids:  # acknowledged and deleted, not left to block the stream
        assert await runtime.redis.xrange(STREAM, entry_id, entry_id) == []


async def test_a_redis_without_the_script_gets_it_loaded(
    client: httpx.AsyncClient, link: dict[str, Any], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    # A script Redis has never seen (as after a restart): EVALSHA answers NOSCRIPT, the script is loaded.
    script = f"{clicks._FOLLOW_SCRIPT}-- {uuid.uuid4()}\n"
    monkeypatch.setattr(clicks, "_FOLLOW_SCRIPT", script)
    monkeypatch.setattr(
        clicks, "_FOLLOW_SHA", hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    )
    await flush_all_clicks(runtime)
    for _ in range(2):
        r = await client.get(f"/r/{link['slug']}", headers={"User-Agent": BROWSER_UA})
        assert r.status_code == 302 and "rl_click" in r.headers["location"]
    await flush_all_clicks(runtime)
    assert len(await stored(runtime, link["program"]["id"])) == 2


def test_redirect_keys_share_the_click_streams_cluster_slot():
    slot = key_slot(STREAM.encode())
    for key in (
        cache.code_key("ABCD2345"),
        cache.program_key("QRST9Z"),
        clicks.pending_click_key(uuid.uuid4()),
    ):
        assert key_slot(key.encode()) == slot, key


@pytest.mark.parametrize(
    "landing",
    [
        "https://example.edu/programs/msc?lang=en",
        "https://example.edu/p?ref=old&utm_source=x&rl_click=y&a=1&a=2#apply",
        "https://example.edu/p",
        "https://example.edu/ü/p?q=a b#frag ment",
    ],
)
def test_the_location_is_what_with_params_and_redirect_response_would_make(landing: str):
    raw_program = cache.program_value(uuid.uuid4(), landing, 30)
    raw_code = cache.code_value(uuid.uuid4(), "AB+CD 12")
    utm = {"utm_source": "referloop", "utm_medium": "referral", "utm_campaign": "QRST9Z"}
    click_id = "01a23aed-6d63-711a-ad9c-3a3383fb01c7"
    cases = [
        (clicks._NO_CODE, "", utm),
        (clicks._CREDITED_BOT, clicks._ref_param(raw_code), {**utm, "ref": "AB+CD 12"}),
        (
            clicks._CREDITED,
            f"{clicks._ref_param(raw_code)}&rl_click={click_id}",
            {**utm, "ref": "AB+CD 12", "rl_click": click_id},
        ),
    ]
    for mode, extra, params in cases:
        head, tail, max_age = clicks._landing(raw_program, "QRST9Z", mode)
        expected = RedirectResponse(clicks.with_params(landing, params)).headers["location"]
        assert head + extra + tail == expected
        assert max_age == 30 * 86400


@pytest.mark.parametrize("secure", [False, True])
def test_the_click_cookie_is_what_set_cookie_would_write(secure: bool):
    response = Response()
    click_id = str(uuid.uuid4())
    response.set_cookie(
        "rl_click", click_id, max_age=86400, httponly=True, samesite="lax", secure=secure, path="/"
    )
    assert (
        f"rl_click={click_id}{_click_cookie_suffix('rl_click', 86400, secure)}"
        == response.headers["set-cookie"]
    )
