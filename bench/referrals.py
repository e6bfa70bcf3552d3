"""Referrals benchmark (issue 5, section 8).

(a) `GET /r/{slug}` (the share-link redirect: Redis only, click buffered in a Redis stream) against a
    bare 302 (`GET /bench/redirect/{slug}`, same stack, no work) in the same run: requests per second
    at 64 connections (wrk) and p50/p95/p99 at a fixed 2,000 rps (open loop). Afterwards every click
    the server buffered is flushed to PostgreSQL (`flush_all_clicks`) and rolled up into the funnel
    (`rollup_clicks`), and the counts are compared: buffered == stored == rolled up.
    Targets: redirect rps >= 70 % of the bare 302's, p99 < 10 ms at 2,000 rps.
(b) 10,000 enrolment outcomes through `POST /partner/v1/outcomes` in batches of 1,000, with
    `referloop worker` running: p95 per batch < 2 s, and every reward pending in the ledger within
    10 s of the last batch's answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    LUA_SCRIPT,
    RESULTS_DIR,
    WORK_DIR,
    BenchOptions,
    LoadResult,
    Server,
    Workload,
    drop_database,
    ensure_wrk,
    fmt,
    fresh_database,
    log,
    machine_info,
    machine_line,
    measure_cpu,
    now_iso,
    parse_wrk_output,
    postgres_version,
    profile_server,
    run_constant_rate,
    run_saturation,
    summarize_collapsed,
    summarize_components,
    write_items,
    write_json,
    write_results_md,
)
from bench.identity import referral_code, server_settings

NAME = "referrals"
CONNECTIONS = 64
FIXED_RATE = 2000.0
TARGET_REDIRECT_VS_BARE = 0.70
TARGET_REDIRECT_P99_MS = 10.0
TARGET_BATCH_P95_S = 2.0
TARGET_PENDING_S = 10.0
BATCH_SIZE = 1000
# A phone browser: known crawlers (and requests with no user agent) are counted apart as bots.
BROWSER_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
# The click stream key is fixed (`referrals:clicks`), so the benchmark server gets a Redis database of
# its own: the flush below must never take another process's clicks.
BENCH_REDIS_DB = 13
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True)
class Plan:
    members: int
    programs: int
    sharing: int  # referrers whose links are requested
    links: int  # requests in the measured lists (distinct or not)
    warmup_s: float
    saturation_s: float
    fixed_s: float
    fixed_warmup_s: float
    outcomes: int

    @classmethod
    def for_options(cls, options: BenchOptions) -> Plan:
        if options.quick:
            return cls(2_000, 5, 1_000, 5_000, 1, 3, 3, 1, 2_000)
        return cls(20_000, 20, 5_000, 100_000, 5, 15, 20, 2, 10_000)


def redis_url_for_bench(url: str) -> str:
    return urlsplit(url)._replace(path=f"/{BENCH_REDIS_DB}").geturl()


def short_code(n: int) -> str:
    chars = []
    for _ in range(6):
        n, r = divmod(n, 32)
        chars.append(CROCKFORD[r])
    return "".join(reversed(chars))


# --------------------------------------------------------------------------------------------------
# Seeding (COPY)


@dataclass
class Catalogue:
    university_id: uuid.UUID
    campaign_id: uuid.UUID
    program_ids: list[uuid.UUID]
    short_codes: list[str]
    member_ids: list[uuid.UUID]
    codes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


async def seed_catalogue(database_url: str, plan: Plan) -> Catalogue:
    """One university, its programs, an active campaign on all of them, and members with codes."""
    import asyncpg

    from referloop.core.ids import uuid7

    now = datetime.now(UTC)
    tag = secrets.token_hex(3)
    university_id, campaign_id = uuid7(), uuid7()
    program_ids = [uuid7() for _ in range(plan.programs)]
    shorts = [short_code(1_000_000 + i) for i in range(plan.programs)]
    member_ids = [uuid7() for _ in range(plan.members)]
    codes = [referral_code(i) for i in range(plan.members)]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "universities",
                records=[(university_id, "Bench University", f"bench-{tag}", "IN", True, now, now)],
                columns=["id", "name", "slug", "country", "active", "created_at", "updated_at"],
            )
            await conn.copy_records_to_table(
                "programs",
                records=[
                    (
                        pid,
                        university_id,
                        f"Bench Program {i}",
                        f"bench-program-{i}",
                        short,
                        "IN",
                        "undergraduate",
                        45_000_000,
                        "INR",
                        # Loopback only: a load generator that followed it would reach nothing outside.
                        f"http://127.0.0.1:9/programs/{i}?lang=en",
                        True,
                        f"bench program {i} bench university",
                        now,
                        now,
                    )
                    for i, (pid, short) in enumerate(zip(program_ids, shorts, strict=True))
                ],
                columns=[
                    "id",
                    "university_id",
                    "name",
                    "slug",
                    "short_code",
                    "country",
                    "level",
                    "fee_amount",
                    "fee_currency",
                    "landing_url",
                    "active",
                    "search_text",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "campaigns",
                records=[
                    (
                        campaign_id,
                        "Bench campaign",
                        "active",
                        0,
                        now - timedelta(days=1),
                        "INR",
                        30,
                        now,
                        now,
                        now,
                    )
                ],
                columns=[
                    "id",
                    "name",
                    "state",
                    "priority",
                    "starts_at",
                    "currency",
                    "attribution_window_days",
                    "activated_at",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "campaign_programs",
                records=[(campaign_id, pid) for pid in program_ids],
                columns=["campaign_id", "program_id"],
            )
            await conn.copy_records_to_table(
                "users",
                records=[
                    (
                        uid,
                        f"ref{i}.{tag}@bench.referloop.test",
                        "!bench",
                        f"Bench Referrer {i}",
                        "member",
                        code,
                        now,
                        now,
                    )
                    for i, (uid, code) in enumerate(zip(member_ids, codes, strict=True))
                ],
                columns=[
                    "id",
                    "email",
                    "password_hash",
                    "display_name",
                    "role",
                    "referral_code",
                    "created_at",
                    "updated_at",
                ],
            )
        await conn.execute("ANALYZE universities; ANALYZE programs; ANALYZE campaigns; ANALYZE users")
    finally:
        await conn.close()
    return Catalogue(university_id, campaign_id, program_ids, shorts, member_ids, codes)


# --------------------------------------------------------------------------------------------------
# Load with a browser's user agent


@dataclass(frozen=True)
class BrowserWorkload(Workload):
    """`path` requests with a browser's User-Agent (the Python runners); wrk gets it with -H."""

    def request_parts(self, item: str) -> tuple[str, str, dict[str, str], bytes | None]:
        method, url, headers, body = super().request_parts(item)
        return method, url, {**headers, "User-Agent": BROWSER_UA}, body


def run_wrk_browser(wrk: str, workload: Workload, *, connections: int, duration_s: float) -> LoadResult:
    """bench.common.run_wrk with a User-Agent header (items.lua's `path` requests take wrk's headers)."""
    cmd = [
        wrk,
        "-t2",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout=10s",
        "--latency",
        "-H",
        f"User-Agent: {BROWSER_UA}",
        "-s",
        str(LUA_SCRIPT),
        workload.url,
        "--",
        str(workload.items_file),
        workload.kind,
        "2",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration_s + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return parse_wrk_output(done.stdout)


def saturate(wrk: str | None, workload: Workload, seconds: float) -> LoadResult:
    if wrk is not None:
        return run_wrk_browser(wrk, workload, connections=CONNECTIONS, duration_s=seconds)
    return run_saturation(None, workload, connections=CONNECTIONS, duration_s=seconds)


def write_redirect_inputs(
    workdir: Path, base_url: str, cat: Catalogue, plan: Plan
) -> tuple[Workload, dict[str, Workload]]:
    """The measured list: `plan.links` requests over the links of `plan.sharing` referrers (one in
    four of the members shares links in a given few minutes), shuffled. The warm-up list touches each
    of those referrers' codes and each program once, so the measured runs find the link cache warm,
    as a live server does (its entries live `referral_link_cache_ttl_seconds`, 5 minutes)."""
    rng = random.Random(5)
    sharing = cat.codes[: plan.sharing]
    slugs = [f"{rng.choice(sharing)}-{rng.choice(cat.short_codes)}" for _ in range(plan.links)]
    items = write_items(workdir / "slugs.txt", slugs)
    warm = [f"{code}-{cat.short_codes[i % len(cat.short_codes)]}" for i, code in enumerate(sharing)]
    warm_items = write_items(workdir / "warm-slugs.txt", warm)
    return BrowserWorkload("warm", f"{base_url}/r/", "path", warm_items, once=True), {
        "bare": BrowserWorkload("bare", f"{base_url}/bench/redirect/", "path", items),
        "redirect": BrowserWorkload("redirect", f"{base_url}/r/", "path", items),
    }


def on_server(workload: Workload, base_url: str) -> Workload:
    """The same workload against another server."""
    path = urlsplit(workload.url).path
    return dataclasses.replace(workload, url=f"{base_url}{path}")


def warm_link_cache(warm: Workload) -> LoadResult:
    """Every sharing referrer's code and every program resolved once (Python closed loop: it stops
    when the list is used up)."""
    log(f"warming the link cache: {len(warm.items()):,} links, each once")
    result = run_saturation(None, warm, connections=CONNECTIONS, duration_s=300)
    log(f"warmed in {result.duration_s:.1f} s ({result.rps:,.0f} rps)")
    return result


def smoke_check_redirects(workloads: dict[str, Workload]) -> None:
    import httpx

    for workload in workloads.values():
        method, url, headers, _ = workload.request_parts(workload.items()[0])
        answer = httpx.request(method, url, headers=headers, timeout=10, follow_redirects=False)
        if answer.status_code != 302 or "location" not in answer.headers:
            raise RuntimeError(f"{workload.name}: {url} answered {answer.status_code}: {answer.text[:300]}")
        if workload.name == "redirect" and "rl_click" not in answer.headers.get("set-cookie", ""):
            raise RuntimeError(f"{url}: no click cookie (was the request taken for a bot's?)")


@dataclass
class Measured:
    saturation: LoadResult
    fixed: LoadResult


def measure_redirects(
    server: Server, wrk: str | None, workloads: dict[str, Workload], plan: Plan, database_url: str
) -> dict[str, Measured]:
    saturation: dict[str, LoadResult] = {}
    for name, workload in workloads.items():
        log(f"{name}: warm-up {plan.warmup_s:g}s at {CONNECTIONS} connections")
        saturate(wrk, workload, plan.warmup_s)
        log(f"{name}: {plan.saturation_s:g}s at {CONNECTIONS} connections")
        cpu: dict[str, float] = {}
        with measure_cpu(server, cpu, database_url):
            result = saturate(wrk, workload, plan.saturation_s)
        result.server_cpu_cores = cpu["cores"]
        if result.rps:
            result.extra["server_cpu_us_per_request"] = round(cpu["cores"] / result.rps * 1e6)
        if "db_connections" in cpu:
            result.extra["db_connections_opened"] = int(cpu["db_connections"])
        saturation[name] = result
        log(
            f"{name}: {result.rps:,.0f} rps, p99 {fmt(result.p99_ms)} ms, errors {result.errors}, "
            f"non-2xx/3xx {result.bad_status}, server CPU {cpu['cores']} cores"
        )
    fixed = fixed_rate_runs(server, workloads, plan)
    return {name: Measured(saturation[name], fixed[name]) for name in workloads}


def fixed_rate_runs(
    server: Server, workloads: dict[str, Workload], plan: Plan, *, cpu_of_master: bool = True
) -> dict[str, LoadResult]:
    """Each workload at FIXED_RATE. With several API workers the server's CPU is not measured (they
    are the master's children, whose time /proc shows only once they exit)."""
    fixed: dict[str, LoadResult] = {}
    for name, workload in workloads.items():
        log(f"{name}: {FIXED_RATE:g} rps for {plan.fixed_s:g}s (+{plan.fixed_warmup_s:g}s warm-up)")
        cpu: dict[str, float] = {}
        with measure_cpu(server, cpu):
            result = run_constant_rate(
                workload,
                rate=FIXED_RATE,
                duration_s=plan.fixed_s,
                warmup_s=plan.fixed_warmup_s,
                connections=CONNECTIONS,
            )
        if cpu_of_master:
            result.server_cpu_cores = cpu["cores"]
        result.extra["overloaded"] = result.errors > 0.01 * result.requests or result.rps < 0.95 * FIXED_RATE
        fixed[name] = result
        log(
            f"{name}: p50 {fmt(result.p50_ms, 2)} / p95 {fmt(result.p95_ms, 2)} / p99 {fmt(result.p99_ms, 2)} ms,"
            f" {result.rps:,.0f} answers/s, errors {result.errors}, sender lag p99 "
            f"{fmt(result.sender_lag_p99_ms, 2)} ms"
        )
    return fixed


# --------------------------------------------------------------------------------------------------
# In-process access to the benchmark's database and Redis (flush, rollup, checks)


def bench_runtime(database_url: str, redis_url: str, var_dir: Path) -> Any:
    from referloop.config import Environment, Settings
    from referloop.runtime import Runtime

    # Development: the flush and rollup need no signing or field keys, and only development makes
    # its own (every other env refuses to start without them).
    settings = Settings.model_validate(
        {
            "env": Environment.development,
            "database_url": database_url,
            "redis_url": redis_url,
            "var_dir": var_dir,
            "log_level": "WARNING",
            "access_log": False,
        }
    )
    return Runtime.build(settings)


async def reset_click_stream(redis_url: str) -> None:
    from redis.asyncio import Redis

    from referloop.referrals.service.clicks import STREAM

    client = Redis.from_url(redis_url)
    try:
        await client.delete(STREAM)
    finally:
        await client.aclose()


async def flush_and_count(database_url: str, redis_url: str, var_dir: Path) -> dict[str, Any]:
    """Every click the server buffered, stored once and rolled up once."""
    from sqlalchemy import text

    from referloop.analytics.service.clicks import rollup_clicks
    from referloop.referrals.service.clicks import STREAM, flush_all_clicks

    rt = bench_runtime(database_url, redis_url, var_dir)
    try:
        buffered = int(await rt.redis.xlen(STREAM))
        started = time.perf_counter()
        flushed = await flush_all_clicks(rt)
        flush_s = time.perf_counter() - started
        async with rt.db.sessionmaker() as session:
            stored = int(await session.scalar(text("SELECT count(*) FROM clicks")) or 0)
            bots = int(await session.scalar(text("SELECT count(*) FROM clicks WHERE is_bot")) or 0)
        started = time.perf_counter()
        rolled = 0
        while True:
            step = await rollup_clicks(rt, settle_seconds=0, max_span_seconds=86400)
            rolled += step.counted
            if not step.behind:
                break
        rollup_s = time.perf_counter() - started
        async with rt.db.sessionmaker() as session:
            in_rollup = int(
                await session.scalar(
                    text("SELECT coalesce(sum(clicks + bot_clicks), 0) FROM analytics_funnel_daily")
                )
                or 0
            )
        left = int(await rt.redis.xlen(STREAM))
    finally:
        await rt.close()
    return {
        "buffered": buffered,
        "flushed_read": flushed.read,
        "stored": stored,
        "stored_bots": bots,
        "rolled_up": in_rollup,
        "left_in_stream": left,
        "flush_seconds": round(flush_s, 2),
        "flush_clicks_per_second": round(stored / flush_s) if flush_s else None,
        "rollup_seconds": round(rollup_s, 2),
        "all_counted": buffered == stored == in_rollup and left == 0 and bots == 0,
    }


def client_answers(measured: dict[str, Measured], name: str) -> int:
    """Answers the measured phases saw (warm-ups excluded; for information only)."""
    m = measured[name]
    return (m.saturation.requests - m.saturation.errors - m.saturation.bad_status) + sum(
        v for k, v in m.fixed.extra.get("statuses", {}).items() if k == "302"
    )


def profile_redirect(
    server: Server, wrk: str | None, workload: Workload, out_dir: Path, seconds: int = 10
) -> Path | None:
    raw = out_dir / f"{NAME}-redirect-profile.collapsed"
    out_dir.mkdir(parents=True, exist_ok=True)
    load = threading.Thread(target=saturate, args=(wrk, workload, seconds + 4), daemon=True)
    load.start()
    time.sleep(2)
    log(f"profiling the server under /r/{{slug}} load for {seconds}s (py-spy)")
    ok = profile_server(server.pid, seconds, raw)
    load.join()
    return raw if ok else None


_ENTRY_FRAMES = ("main (referloop/cli.py)", "serve (referloop/cli.py)", "<module> (referloop")


def profile_summary(raw: Path) -> dict[str, Any]:
    text = raw.read_text()
    total, rows = summarize_collapsed(text, top=100_000)
    ours = [
        {"function": n, "inclusive_pct": round(i, 1), "self_pct": round(o, 1)}
        for n, i, o in rows
        if "(referloop/" in n and not n.startswith(_ENTRY_FRAMES) and i >= 0.5
    ]
    return {"samples": total, "components": summarize_components(text), "our_functions": ours[:15]}


# --------------------------------------------------------------------------------------------------
# Results


def _target(
    value: float | None, *, minimum: float | None = None, maximum: float | None = None
) -> dict[str, Any]:
    met = value is not None and (
        (minimum is None or value >= minimum) and (maximum is None or value < maximum)
    )
    out: dict[str, Any] = {"value": value, "met": met}
    if minimum is not None:
        out["min"] = minimum
    if maximum is not None:
        out["max"] = maximum
    return out


def results_document(
    measured: dict[str, Measured],
    clicks: dict[str, Any],
    outcomes: dict[str, Any] | None,
    machine: dict[str, Any],
    plan: Plan,
    wrk: str | None,
    two_workers: dict[str, LoadResult] | None = None,
) -> dict[str, Any]:
    runs = {
        name: {
            "rps": round(m.saturation.rps, 1),
            "p50_ms": m.fixed.p50_ms,
            "p95_ms": m.fixed.p95_ms,
            "p99_ms": m.fixed.p99_ms,
            "saturation": m.saturation.as_dict(),
            "fixed_rate": m.fixed.as_dict(),
        }
        for name, m in measured.items()
    }
    for name, result in (two_workers or {}).items():
        runs[name]["fixed_rate_2_workers"] = result.as_dict()
    bare = measured["bare"].saturation.rps
    ratio = round(measured["redirect"].saturation.rps / bare, 3) if bare else None
    targets: dict[str, Any] = {
        "redirect_vs_bare_rps": _target(ratio, minimum=TARGET_REDIRECT_VS_BARE),
        "redirect_p99_ms_at_2000_rps": _target(
            measured["redirect"].fixed.p99_ms, maximum=TARGET_REDIRECT_P99_MS
        ),
        **(
            {
                "redirect_p99_ms_at_2000_rps_2_api_workers": _target(
                    two_workers["redirect"].p99_ms, maximum=TARGET_REDIRECT_P99_MS
                )
            }
            if two_workers
            else {}
        ),
        "every_click_counted": {
            "value": clicks["stored"],
            "expected": clicks["buffered"],
            "met": clicks["all_counted"],
        },
    }
    if outcomes is not None:
        targets["outcome_batch_p95_s"] = _target(outcomes.get("batch_p95_s"), maximum=TARGET_BATCH_P95_S)
        targets["rewards_pending_after_last_batch_s"] = _target(
            outcomes.get("all_pending_after_s"), maximum=TARGET_PENDING_S
        )
    clicks = {**clicks, "client_302s_measured_phases": client_answers(measured, "redirect")}
    return {
        "date": now_iso(),
        "machine": machine,
        "runs": runs,
        "ratios": {"redirect_vs_bare_rps": ratio},
        "targets": targets,
        "clicks": clicks,
        "outcomes": outcomes,
        "setup": {
            "members": plan.members,
            "programs": plan.programs,
            "sharing_referrers": plan.sharing,
            "requests_list": plan.links,
            "api_workers": 1,
            "connections": CONNECTIONS,
            "saturation_seconds": plan.saturation_s,
            "saturation_tool": "wrk" if wrk else "python-closed-loop (aiohttp)",
            "fixed_rate_rps": FIXED_RATE,
            "fixed_rate_seconds": plan.fixed_s,
            "fixed_rate_tool": "bench.common.run_constant_rate (aiohttp, open loop)",
            "outcomes": plan.outcomes,
            "outcome_batch_size": BATCH_SIZE,
        },
    }


def _met(t: dict[str, Any]) -> str:
    return "met" if t["met"] else "**missed**"


def markdown_section(doc: dict[str, Any]) -> str:
    setup, t, c = doc["setup"], doc["targets"], doc["clicks"]
    lines = [
        "## referrals: `GET /r/{slug}` and partner outcomes",
        "",
        f"- Date: {doc['date']}",
        f"- Machine: {machine_line(doc['machine'])}",
        f"- Setup: {setup['members']:,} members, {setup['programs']} programs; the links of "
        f"{setup['sharing_referrers']:,} of them requested in a shuffled list of {setup['requests_list']:,}, "
        "after a pass that resolves each of their codes once (the link cache is warm, as on a live server); "
        "one API worker (`referloop serve --workers 1`), "
        "PostgreSQL, Redis and the load generators on the same machine, a browser's User-Agent (bots take "
        f"a cheaper path). Saturation: {setup['connections']} connections for {setup['saturation_seconds']:g} s "
        f"({setup['saturation_tool']}); latency at a fixed {setup['fixed_rate_rps']:,.0f} rps for "
        f"{setup['fixed_rate_seconds']:g} s, measured from each request's intended send time. The baseline is "
        "`GET /bench/redirect/{slug}`: a 302 through the same stack that does nothing else.",
        "",
        f"| workload | rps at {setup['connections']} conn. | server CPU (cores) | server CPU per request (µs) "
        f"| p50 / p95 / p99 ms at {setup['fixed_rate_rps']:,.0f} rps | the same with 2 API workers |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    titles = {"bare": "bare 302 (baseline)", "redirect": "`GET /r/{slug}`"}

    def latency(fixed: dict[str, Any] | None) -> str:
        if not fixed:
            return "–"
        cell = (
            f"{fmt(fixed.get('p50_ms'), 2)} / {fmt(fixed.get('p95_ms'), 2)} / {fmt(fixed.get('p99_ms'), 2)}"
        )
        if fixed.get("extra", {}).get("overloaded"):
            cell += f" (overloaded: {fmt(fixed.get('rps'), 0)} answers/s)"
        return cell

    for name, run_ in doc["runs"].items():
        sat = run_["saturation"]
        lines.append(
            f"| {titles.get(name, name)} | {fmt(run_['rps'], 0)} | {fmt(sat.get('server_cpu_cores'), 2)} "
            f"| {sat.get('extra', {}).get('server_cpu_us_per_request', '–')} | {latency(run_['fixed_rate'])} "
            f"| {latency(run_.get('fixed_rate_2_workers'))} |"
        )
    ratio, p99 = t["redirect_vs_bare_rps"], t["redirect_p99_ms_at_2000_rps"]
    p99_two = t.get("redirect_p99_ms_at_2000_rps_2_api_workers")
    lines += [
        "",
        f"- Redirect rps vs the bare 302: **{fmt(100 * ratio['value'] if ratio['value'] else None, 0)} %** "
        f"(target >= 70 %): {_met(ratio)}",
        f"- Redirect p99 at 2,000 rps: **{fmt(p99['value'], 2)} ms** with one API worker"
        + (f", **{fmt(p99_two['value'], 2)} ms** with two" if p99_two else "")
        + f" (target < 10 ms): {_met(p99)}"
        + (f" / {_met(p99_two)}" if p99_two else ""),
        f"- Clicks: {c['buffered']:,} buffered in Redis by the server, {c['stored']:,} stored after the flush "
        f"({c['flush_seconds']:g} s, {c['flush_clicks_per_second'] or 0:,} clicks/s in one process), "
        f"{c['rolled_up']:,} in the funnel rollup ({c['rollup_seconds']:g} s); {c['left_in_stream']} left in "
        f"the stream, {c['stored_bots']} taken for bots: {'every click counted once' if c['all_counted'] else '**mismatch**'}. "
        f"(The load generators saw {c['client_302s_measured_phases']:,} redirects in the measured phases; "
        "the warm-ups add the rest.)",
    ]
    outcomes = doc.get("outcomes")
    if outcomes:
        lines += [
            "",
            f"Partner outcomes: {outcomes['items']:,} `enrolled` outcomes in {outcomes['batches']} batches of "
            f"{setup['outcome_batch_size']:,} (`POST /partner/v1/outcomes`, one at a time), with `referloop worker` "
            "running (in-process outbox drain).",
            "",
            f"- Per batch: p50 {fmt(outcomes.get('batch_p50_s'), 2)} s, p95 **{fmt(outcomes.get('batch_p95_s'), 2)} s**, "
            f"max {fmt(outcomes.get('batch_max_s'), 2)} s (target p95 < 2 s): {_met(t['outcome_batch_p95_s'])}; "
            f"items applied {outcomes.get('applied', 0):,}, other results {outcomes.get('other_results', {})}",
            f"- Every reward pending in the ledger **{fmt(outcomes.get('all_pending_after_s'), 2)} s** after the "
            f"last batch's answer (target < 10 s): {_met(t['rewards_pending_after_last_batch_s'])}; "
            f"rewards pending {outcomes.get('rewards_pending', 0):,} of {outcomes.get('rewards_expected', 0):,} expected",
        ]
        for process, prof in (outcomes.get("profile") or {}).items():
            lines += [
                "",
                f"Where the {process}'s time goes during two more batches (py-spy, {prof['samples']:,} samples; "
                f"stacks in `bench/.work/{NAME}-outcomes-{process}-profile.collapsed`, not kept in git):",
                "",
                "| component | share of samples % |",
                "| --- | ---: |",
            ]
            lines += [f"| {name} | {share:.1f} |" for name, share in prof["components"].items()]
            lines += ["", "| our function | inclusive % |", "| --- | ---: |"]
            lines += [
                f"| `{row['function']}` | {row['inclusive_pct']:.1f} |" for row in prof["our_functions"]
            ]
    profile = doc.get("profile")
    if profile:
        lines += [
            "",
            f"Where the API worker's time goes under `/r/{{slug}}` load (py-spy, {profile['samples']:,} samples; "
            f"stacks in `bench/.work/{NAME}-redirect-profile.collapsed`, not kept in git), by the library of the innermost "
            "Python frame:",
            "",
            "| component | share of samples % |",
            "| --- | ---: |",
        ]
        lines += [f"| {name} | {share:.1f} |" for name, share in profile["components"].items()]
        lines += ["", "| our function | inclusive % |", "| --- | ---: |"]
        lines += [f"| `{row['function']}` | {row['inclusive_pct']:.1f} |" for row in profile["our_functions"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def run(options: BenchOptions) -> dict[str, Any]:
    from referloop.core.security.tokens import generate_private_pem

    plan = Plan.for_options(options)
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="referloop-bench-referrals-"))
    db_name = f"referloop_bench_{NAME}_{os.getpid()}"
    redis_url = redis_url_for_bench(options.redis_url)
    try:
        log(f"fresh database {db_name} and migrations")
        database_url = fresh_database(options.admin_database_url, db_name)
        log(f"seeding {plan.members:,} referrers and {plan.programs} programs with COPY")
        cat = asyncio.run(seed_catalogue(database_url, plan))
        asyncio.run(reset_click_stream(redis_url))
        machine = machine_info(asyncio.run(postgres_version(database_url)))
        pem = generate_private_pem()
        server = Server(server_settings(database_url, redis_url, workdir / "var", pem), workdir)
        with server:
            warm, workloads = write_redirect_inputs(workdir, server.base_url, cat, plan)
            smoke_check_redirects(workloads)
            warm_link_cache(warm)
            measured = measure_redirects(server, wrk, workloads, plan, database_url)
            log("flushing the buffered clicks and rolling them up")
            clicks = asyncio.run(flush_and_count(database_url, redis_url, workdir / "var"))
            log(
                f"clicks: buffered {clicks['buffered']:,}, stored {clicks['stored']:,}, "
                f"rolled up {clicks['rolled_up']:,} (flush {clicks['flush_seconds']} s)"
            )
            profile_raw: Path | None = None
            doc = results_document(measured, clicks, None, machine, plan, wrk, None)
            missed = not all(v["met"] for v in doc["targets"].values())
            if options.profile or (missed and not options.quick):
                writing = options.write and not options.quick
                profile_raw = profile_redirect(
                    server, wrk, workloads["redirect"], WORK_DIR if writing else workdir
                )
                asyncio.run(reset_click_stream(redis_url))  # the profiling load's clicks are not counted
        log("the fixed rate again with two API workers (`--workers 2`)")
        two = Server(server_settings(database_url, redis_url, workdir / "var", pem), workdir, workers=2)
        with two:
            warm_link_cache(on_server(warm, two.base_url))
            two_workers = fixed_rate_runs(
                two, {n: on_server(w, two.base_url) for n, w in workloads.items()}, plan, cpu_of_master=False
            )
        asyncio.run(reset_click_stream(redis_url))  # the clicks check covers the one-worker runs
        outcomes = run_outcomes(options, plan, database_url, redis_url, workdir, cat, pem)
        doc = results_document(measured, clicks, outcomes, machine, plan, wrk, two_workers)
        if profile_raw is not None:
            doc["profile"] = profile_summary(profile_raw)
        section = markdown_section(doc)
        if options.write and not options.quick:
            write_json(NAME, doc)
            write_results_md(NAME, section)
            log(f"wrote {RESULTS_DIR / (NAME + '.json')} and bench/RESULTS.md")
        print(section, flush=True)
        print(json.dumps(doc["targets"], indent=2), flush=True)
        return doc
    finally:
        if not options.keep_db:
            drop_database(options.admin_database_url, db_name)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept database {db_name} and {workdir}")


# --------------------------------------------------------------------------------------------------
# (b) partner outcomes


@dataclass
class OutcomeSetup:
    referral_ids: list[uuid.UUID]  # the measured run's
    api_key: str
    rule_id: uuid.UUID
    spare_ids: list[uuid.UUID] = field(default_factory=list)  # for a profile after it


async def seed_outcome_data(database_url: str, cat: Catalogue, measured: int, spare: int) -> OutcomeSetup:
    """`count` referrals in state applied (one per referrer, spread over the programs), an enrolment
    reward rule on the campaign, and a partner API key for the university, all with COPY."""
    import asyncpg

    from referloop.config import Environment
    from referloop.core.ids import uuid7
    from referloop.referrals.partner.service.keys import hash_token, new_token

    now = datetime.now(UTC)
    applied_at = now - timedelta(days=3)
    referral_ids = [uuid7() for _ in range(measured + spare)]
    token = new_token(SimpleNamespace(env=Environment.production))  # only the mode is read
    rule_id = uuid7()
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "referrals",
                records=[
                    (
                        rid,
                        cat.member_ids[i % len(cat.member_ids)],
                        cat.program_ids[i % len(cat.program_ids)],
                        cat.university_id,
                        cat.campaign_id,
                        applied_at,
                        "applied",
                        "invite",
                        "Lead L.",
                        os.urandom(32),  # a lead's email blind index
                        applied_at,
                        applied_at,
                        applied_at,
                        applied_at,
                        applied_at,
                    )
                    for i, rid in enumerate(referral_ids)
                ],
                columns=[
                    "id",
                    "member_id",
                    "program_id",
                    "university_id",
                    "campaign_id",
                    "campaign_chosen_at",
                    "state",
                    "source",
                    "referee_label",
                    "email_index",
                    "invited_at",
                    "applied_at",
                    "state_changed_at",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "reward_rules",
                records=[(rule_id, cat.campaign_id, "enrolled", "referrer", "fixed", 100_000, 30, now, now)],
                columns=[
                    "id",
                    "campaign_id",
                    "milestone",
                    "role",
                    "kind",
                    "amount",
                    "hold_days",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "partner_api_keys",
                records=[
                    (
                        uuid7(),
                        cat.university_id,
                        "Bench CRM",
                        hash_token(token),
                        token[:13],
                        token[-4:],
                        "bench@bench.referloop.test",
                        now,
                        now,
                    )
                ],
                columns=[
                    "id",
                    "university_id",
                    "name",
                    "token_hash",
                    "display_prefix",
                    "last4",
                    "contact_email",
                    "created_at",
                    "updated_at",
                ],
            )
        await conn.execute("ANALYZE referrals; ANALYZE reward_rules; ANALYZE partner_api_keys")
    finally:
        await conn.close()
    return OutcomeSetup(referral_ids[:measured], token, rule_id, referral_ids[measured:])


class Worker:
    """`referloop worker` as a child process (in-process outbox drain and the periodic jobs)."""

    def __init__(self, settings_env: dict[str, str], workdir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REFERLOOP_")}
        self.env.update(settings_env)
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        from bench.common import referloop_command

        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*referloop_command(), "worker"],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def _rewards_by_status(database_url: str, campaign_id: uuid.UUID) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM rewards WHERE campaign_id = $1 GROUP BY status", campaign_id
        )
    finally:
        await conn.close()
    return {r["status"]: int(r["n"]) for r in rows}


def post_outcome_batches(
    base_url: str, referral_ids: list[uuid.UUID], api_key: str, batch_size: int
) -> dict[str, Any]:
    import httpx

    occurred = datetime.now(UTC).replace(microsecond=0).isoformat()
    durations: list[float] = []
    results: dict[str, int] = {}
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for start in range(0, len(referral_ids), batch_size):
            chunk = referral_ids[start : start + batch_size]
            body = {
                "items": [
                    {
                        "external_id": f"bench-enrol-{rid}",
                        "type": "enrolled",
                        "occurred_at": occurred,
                        "referral_id": str(rid),
                        "fee": {"amount": 45_000_000, "currency": "INR"},
                    }
                    for rid in chunk
                ]
            }
            began = time.perf_counter()
            answer = client.post(
                "/partner/v1/outcomes", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
            )
            durations.append(time.perf_counter() - began)
            if answer.status_code != 200:
                failures.append(f"{answer.status_code}: {answer.text[:300]}")
                continue
            for status, n in answer.json().get("counts", {}).items():
                results[status] = results.get(status, 0) + int(n)
            log(f"outcome batch {len(durations)}: {durations[-1]:.2f} s")
    last_answer = time.monotonic()
    ordered = sorted(durations)
    from bench.common import percentile

    return {
        "durations": durations,
        "ordered": ordered,
        "results": results,
        "failures": failures,
        "last_answer_monotonic": last_answer,
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
    }


def run_outcomes(
    options: BenchOptions,
    plan: Plan,
    database_url: str,
    redis_url: str,
    workdir: Path,
    cat: Catalogue,
    pem: bytes,
) -> dict[str, Any]:
    """Part (b): seed applied referrals, start a server and a worker, post the enrolments in
    batches, then watch the ledger until every reward is pending."""
    log(f"partner outcomes: seeding {plan.outcomes:,} applied referrals, a reward rule and an API key")
    spare = 2 * BATCH_SIZE if not options.quick else 0
    setup = asyncio.run(seed_outcome_data(database_url, cat, plan.outcomes, spare))
    env = server_settings(database_url, redis_url, workdir / "var", pem)
    server = Server(env, workdir)
    with server, Worker(env, workdir) as worker:
        time.sleep(2)  # the worker's first poll
        posted = post_outcome_batches(server.base_url, setup.referral_ids, setup.api_key, BATCH_SIZE)
        expected = posted["results"].get("applied", 0)
        deadline = posted["last_answer_monotonic"] + 120
        counts: dict[str, int] = {}
        all_pending_after: float | None = None
        while time.monotonic() < deadline:
            counts = asyncio.run(_rewards_by_status(database_url, cat.campaign_id))
            done = counts.get("pending", 0) + counts.get("released", 0)
            if done >= expected:
                all_pending_after = time.monotonic() - posted["last_answer_monotonic"]
                break
            time.sleep(0.1)
        worker_log = ""
        if all_pending_after is None:
            worker_log = worker.log_tail(15)
            log(f"rewards not all pending after 120 s: {counts}\n{worker_log}")
        p95 = posted["p95"]
        missed = p95 is None or p95 >= TARGET_BATCH_P95_S or all_pending_after is None
        missed = missed or all_pending_after >= TARGET_PENDING_S
        profile: dict[str, Any] | None = None
        if setup.spare_ids and (options.profile or missed):
            profile = profile_outcomes(server, worker, setup, options, workdir)
    log(
        f"outcome batches p50 {fmt(posted['p50'], 2)} s, p95 {fmt(posted['p95'], 2)} s; "
        f"all {expected:,} rewards pending {fmt(all_pending_after, 2)} s after the last answer"
    )
    out = {
        "items": len(setup.referral_ids),
        "batches": len(posted["durations"]),
        "batch_seconds": [round(d, 3) for d in posted["durations"]],
        "batch_p50_s": round(posted["p50"], 3) if posted["p50"] is not None else None,
        "batch_p95_s": round(posted["p95"], 3) if posted["p95"] is not None else None,
        "batch_max_s": round(posted["ordered"][-1], 3) if posted["ordered"] else None,
        "applied": expected,
        "other_results": {k: v for k, v in posted["results"].items() if k != "applied"},
        "failed_batches": posted["failures"],
        "rewards_expected": expected,
        "rewards_pending": counts.get("pending", 0) + counts.get("released", 0),
        "rewards_by_status": counts,
        "all_pending_after_s": round(all_pending_after, 2) if all_pending_after is not None else None,
    }
    if profile is not None:
        out["profile"] = profile
    if worker_log:
        out["worker_log_tail"] = worker_log.splitlines()
    return out


def _record(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return None
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profile_outcomes(
    server: Server, worker: Worker, setup: OutcomeSetup, options: BenchOptions, workdir: Path
) -> dict[str, Any]:
    """Two more batches (spare referrals) with py-spy on the server and on the worker."""
    out_dir = WORK_DIR if options.write and not options.quick else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    raws = {"server": out_dir / f"{NAME}-outcomes-server-profile.collapsed"}
    spies = {"server": _record(server.pid, raws["server"])}
    if worker.proc is not None:
        raws["worker"] = out_dir / f"{NAME}-outcomes-worker-profile.collapsed"
        spies["worker"] = _record(worker.proc.pid, raws["worker"])
    time.sleep(1)
    log("profiling two more outcome batches (py-spy on the server and the worker)")
    post_outcome_batches(server.base_url, setup.spare_ids, setup.api_key, BATCH_SIZE)
    time.sleep(5)  # the worker's share of it
    summaries: dict[str, Any] = {}
    for name, spy in spies.items():
        if spy is None:
            continue
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
        if raws[name].exists():
            summaries[name] = profile_summary(raws[name])
    return summaries
