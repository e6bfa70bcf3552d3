"""Identity benchmark (issue "Foundation", section 6).

Seeds 100,000 members into a fresh database, starts `referloop serve --workers 1`, and measures
`GET /v1/me`, `POST /v1/auth/refresh` and the baseline `GET /bench/baseline/{id}` (one SELECT by
primary key through the same pool): requests per second at 64 connections, and p50/p95/p99 at a
fixed 1,000 requests per second. Targets: /v1/me >= 60 % of the baseline's rps, p99 < 25 ms."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
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

NAME = "identity"
CONNECTIONS = 64
# The saturation runs take turns (baseline, me, refresh, baseline, ...) in this many rounds, so that
# other work on the machine weighs on each alike and the ratios hold even where the rps do not.
ROUNDS = 3
FIXED_RATE = 1000.0
TARGET_ME_VS_BASELINE = 0.60
TARGET_ME_P99_MS = 25.0
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TOKEN_TTL_SECONDS = 3600  # the whole run must fit in one access-token lifetime


@dataclass(frozen=True)
class Plan:
    members: int
    warmup_s: float
    saturation_s: float
    fixed_s: float
    fixed_warmup_s: float

    @classmethod
    def for_options(cls, options: BenchOptions) -> Plan:
        if options.quick:
            return cls(members=20_000, warmup_s=1, saturation_s=3, fixed_s=3, fixed_warmup_s=1)
        return cls(members=100_000, warmup_s=5, saturation_s=15, fixed_s=20, fixed_warmup_s=2)


@dataclass
class Seeded:
    user_ids: list[uuid.UUID]
    session_ids: list[uuid.UUID]
    refresh_tokens: list[str]


def referral_code(n: int) -> str:
    """A unique 8-character Crockford base32 code per member number."""
    chars = []
    for _ in range(8):
        n, r = divmod(n, 32)
        chars.append(CROCKFORD[r])
    return "".join(reversed(chars))


def _password_hash() -> str:
    """One Argon2id hash with the production cost, shared by every seeded member (hashing 100,000
    passwords would take the better part of an hour and measures nothing here)."""
    from argon2 import PasswordHasher

    from referloop.config import Settings

    fields = Settings.model_fields
    hasher = PasswordHasher(
        time_cost=fields["argon2_time_cost"].default,
        memory_cost=fields["argon2_memory_cost_kib"].default,
        parallelism=fields["argon2_parallelism"].default,
    )
    return hasher.hash("bench-password-" + secrets.token_hex(8))


async def seed(database_url: str, members: int) -> Seeded:
    """Members, one sign-in session each and one refresh token per session, written with COPY."""
    import asyncpg

    from referloop.core.ids import uuid7
    from referloop.core.security.tokens import hash_token, new_opaque_token

    password_hash = _password_hash()
    now = datetime.now(UTC)
    expires = now + timedelta(days=30)
    user_ids = [uuid7() for _ in range(members)]
    session_ids = [uuid7() for _ in range(members)]
    tokens = [new_opaque_token("rt") for _ in range(members)]
    run_tag = secrets.token_hex(3)
    users = [
        (
            uid,
            f"bench{i}.{run_tag}@bench.referloop.test",
            password_hash,
            f"Bench Member {i}",
            "member",
            referral_code(i),
            "en",
            "IN",
            "Asia/Kolkata",
            "INR",
            "none",
            now,
            now,
            now,
        )
        for i, uid in enumerate(user_ids)
    ]
    sessions = [
        (sid, uid, now, now, expires, "127.0.0.1", "referloop-bench", "bench", False)
        for sid, uid in zip(session_ids, user_ids, strict=True)
    ]
    refresh = [
        (uuid7(), sid, hash_token(tok), now, expires) for sid, tok in zip(session_ids, tokens, strict=True)
    ]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "users",
                records=users,
                columns=[
                    "id",
                    "email",
                    "password_hash",
                    "display_name",
                    "role",
                    "referral_code",
                    "locale",
                    "country",
                    "timezone",
                    "preferred_currency",
                    "kyc_status",
                    "email_verified_at",
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "auth_sessions",
                records=sessions,
                columns=[
                    "id",
                    "user_id",
                    "created_at",
                    "last_used_at",
                    "expires_at",
                    "ip",
                    "user_agent",
                    "device_name",
                    "mfa",
                ],
            )
            await conn.copy_records_to_table(
                "refresh_tokens",
                records=refresh,
                columns=["id", "session_id", "token_hash", "created_at", "expires_at"],
            )
        await conn.execute("ANALYZE users; ANALYZE auth_sessions; ANALYZE refresh_tokens")
    finally:
        await conn.close()
    return Seeded(user_ids=user_ids, session_ids=session_ids, refresh_tokens=tokens)


def mint_access_tokens(pem: bytes, seeded: Seeded) -> list[str]:
    """Access tokens for the seeded members, signed with the server's own key."""
    from referloop.core.security.tokens import SigningKey, TokenSigner

    signer = TokenSigner([SigningKey.from_pem(pem)], "referloop", TOKEN_TTL_SECONDS)
    return [
        signer.issue(user_id=uid, session_id=sid, role="member", mfa=False)[0]
        for uid, sid in zip(seeded.user_ids, seeded.session_ids, strict=True)
    ]


def server_settings(database_url: str, redis_url: str, var_dir: Path, pem: bytes) -> dict[str, str]:
    field_key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    return {
        "REFERLOOP_ENV": "production",
        "REFERLOOP_DATABASE_URL": database_url,
        "REFERLOOP_REDIS_URL": redis_url,
        "REFERLOOP_JWT_PRIVATE_KEYS": json.dumps([pem.decode()]),
        "REFERLOOP_FIELD_ENCRYPTION_KEYS": f"bench:{field_key}",
        "REFERLOOP_VAR_DIR": str(var_dir),
        "REFERLOOP_ACCESS_TOKEN_TTL_SECONDS": str(TOKEN_TTL_SECONDS),
        "REFERLOOP_RATE_LIMIT_ENABLED": "false",
        "REFERLOOP_ACCESS_LOG": "false",
        "REFERLOOP_LOG_LEVEL": "WARNING",
        "REFERLOOP_BENCH_ROUTES_ENABLED": "true",
    }


def refresh_slices(tokens: list[str], plan: Plan) -> dict[str, list[str]]:
    """Single-use tokens split so that no phase ever presents a token another phase used.

    The half-load run goes below FIXED_RATE (it only runs when half the saturation rate is lower),
    so it needs at most as many as the fixed-rate run."""
    fixed_need = int(FIXED_RATE * (plan.fixed_s + plan.fixed_warmup_s) * 1.05) + 100
    rest = len(tokens) - 2 * fixed_need
    if rest < len(tokens) // 4:
        raise ValueError(f"{len(tokens)} refresh tokens cannot cover two fixed-rate runs of {fixed_need}")
    warm = rest // 4
    per_round = (rest - warm) // ROUNDS
    slices = {"warmup": tokens[:warm]}
    for r in range(ROUNDS):
        end = rest if r == ROUNDS - 1 else warm + (r + 1) * per_round
        slices[f"saturation-{r}"] = tokens[warm + r * per_round : end]
    slices["fixed"] = tokens[rest : rest + fixed_need]
    slices["half"] = tokens[rest + fixed_need :]
    return slices


@dataclass
class Inputs:
    baseline: Workload
    me: Workload
    refresh: dict[str, Workload]  # per phase: warmup, saturation, fixed


def write_inputs(
    workdir: Path, base_url: str, seeded: Seeded, access_tokens: list[str], plan: Plan
) -> Inputs:
    rng = random.Random(6)  # a fixed order, so runs are comparable; shuffled so neighbours differ
    ids = [str(u) for u in seeded.user_ids]
    rng.shuffle(ids)
    tokens = list(access_tokens)
    rng.shuffle(tokens)
    refresh = list(seeded.refresh_tokens)
    rng.shuffle(refresh)
    slices = refresh_slices(refresh, plan)
    return Inputs(
        baseline=Workload(
            "baseline", f"{base_url}/bench/baseline/", "path", write_items(workdir / "user-ids.txt", ids)
        ),
        me=Workload("me", f"{base_url}/v1/me", "bearer", write_items(workdir / "access-tokens.txt", tokens)),
        refresh={
            phase: Workload(
                "refresh",
                f"{base_url}/v1/auth/refresh",
                "json:refresh_token",
                write_items(workdir / f"refresh-{phase}.txt", items),
                once=True,
            )
            for phase, items in slices.items()
        },
    )


def smoke_check(inputs: Inputs) -> None:
    """One request of each kind must succeed before minutes are spent measuring failures."""
    import httpx

    checks = [inputs.baseline, inputs.me, inputs.refresh["warmup"]]
    for workload in checks:
        items = workload.items()
        # The last warm-up token: the warm-up itself runs out before it gets there, or stops for it.
        method, url, headers, body = workload.request_parts(items[-1])
        answer = httpx.request(method, url, headers=headers, content=body, timeout=10)
        if answer.status_code != 200:
            raise RuntimeError(
                f"{workload.name}: {method} {url} answered {answer.status_code}: {answer.text[:500]}"
            )
    warm = inputs.refresh["warmup"]
    write_items(warm.items_file, warm.items()[:-1])


@dataclass
class Measured:
    saturation: LoadResult
    fixed: LoadResult
    half_load: LoadResult | None  # at half the saturation rate, when that is below FIXED_RATE


def measure(
    server: Server, wrk: str | None, inputs: Inputs, plan: Plan, database_url: str
) -> dict[str, Measured]:
    fixed: dict[str, LoadResult] = {}
    plans = [
        ("baseline", inputs.baseline, [inputs.baseline] * ROUNDS, inputs.baseline, inputs.baseline),
        ("me", inputs.me, [inputs.me] * ROUNDS, inputs.me, inputs.me),
        (
            "refresh",
            inputs.refresh["warmup"],
            [inputs.refresh[f"saturation-{r}"] for r in range(ROUNDS)],
            inputs.refresh["fixed"],
            inputs.refresh["half"],
        ),
    ]
    for name, warm, _, _, _ in plans:
        log(f"{name}: warm-up {plan.warmup_s:g}s at {CONNECTIONS} connections")
        run_saturation(wrk, warm, connections=CONNECTIONS, duration_s=plan.warmup_s)
    parts: dict[str, list[tuple[LoadResult, dict[str, float]]]] = {name: [] for name, *_ in plans}
    per_round = plan.saturation_s / ROUNDS
    for r in range(ROUNDS):
        for name, _, per_round_workloads, _, _ in plans:
            log(f"{name}: {per_round:g}s at {CONNECTIONS} connections (round {r + 1} of {ROUNDS})")
            cpu: dict[str, float] = {}
            with measure_cpu(server, cpu, database_url):
                part = run_saturation(
                    wrk, per_round_workloads[r], connections=CONNECTIONS, duration_s=per_round
                )
            parts[name].append((part, cpu))
    saturation = {name: combine_rounds(rounds) for name, rounds in parts.items()}
    for name, result in saturation.items():
        log(
            f"{name}: {result.rps:,.0f} rps, p99 {fmt(result.p99_ms)} ms, errors {result.errors}, "
            f"non-2xx {result.bad_status}, server CPU {result.server_cpu_cores} cores, "
            f"DB connections opened {result.extra.get('db_connections_opened', '?')}"
        )
    half: dict[str, LoadResult | None] = {}
    for name, _, _, at_rate, at_half in plans:
        fixed[name] = fixed_rate_run(server, name, at_rate, FIXED_RATE, plan)
        # Where 1,000 rps is past what the server can do, the figure above only says "overloaded";
        # half the saturation rate shows what the route costs when it is not.
        half_rate = math.floor(saturation[name].rps / 2 / 10) * 10
        half[name] = (
            fixed_rate_run(server, name, at_half, half_rate, plan) if 10 <= half_rate < FIXED_RATE else None
        )
    return {name: Measured(saturation[name], fixed[name], half[name]) for name in saturation}


def combine_rounds(rounds: list[tuple[LoadResult, dict[str, float]]]) -> LoadResult:
    """One saturation figure from its rounds: requests over time for rps, the median round for
    percentiles, sums for errors, and the server's CPU weighted by each round's length."""
    results = [r for r, _ in rounds]
    duration = sum(r.duration_s for r in results)
    requests = sum(r.requests for r in results)

    def median(values: list[float | None]) -> float | None:
        present = sorted(v for v in values if v is not None)
        return present[len(present) // 2] if present else None

    combined = LoadResult(
        tool=results[0].tool,
        requests=requests,
        duration_s=round(duration, 3),
        rps=round(requests / duration, 1) if duration else 0.0,
        p50_ms=median([r.p50_ms for r in results]),
        p95_ms=median([r.p95_ms for r in results]),
        p99_ms=median([r.p99_ms for r in results]),
        max_ms=max((r.max_ms for r in results if r.max_ms is not None), default=None),
        errors=sum(r.errors for r in results),
        bad_status=sum(r.bad_status for r in results),
        exhausted=any(r.exhausted for r in results),
    )
    cores = sum(cpu["cores"] * r.duration_s for r, cpu in rounds) / duration if duration else 0.0
    combined.server_cpu_cores = round(cores, 2)
    if combined.rps:
        # CPU per request holds up better than rps on a machine others are using too
        combined.extra["server_cpu_us_per_request"] = round(cores / combined.rps * 1e6)
    if all("db_connections" in cpu for _, cpu in rounds):
        combined.extra["db_connections_opened"] = int(sum(cpu["db_connections"] for _, cpu in rounds))
    combined.extra["rounds_rps"] = [round(r.rps, 1) for r in results]
    return combined


def fixed_rate_run(server: Server, name: str, workload: Workload, rate: float, plan: Plan) -> LoadResult:
    log(f"{name}: {rate:g} rps for {plan.fixed_s:g}s (+{plan.fixed_warmup_s:g}s warm-up)")
    cpu: dict[str, float] = {}
    with measure_cpu(server, cpu):
        result = run_constant_rate(
            workload,
            rate=rate,
            duration_s=plan.fixed_s,
            warmup_s=plan.fixed_warmup_s,
            connections=CONNECTIONS,
        )
    result.server_cpu_cores = cpu["cores"]
    result.extra["overloaded"] = result.errors > 0.01 * result.requests or result.rps < 0.95 * rate
    log(
        f"{name}: p50 {fmt(result.p50_ms, 2)} / p95 {fmt(result.p95_ms, 2)} / p99 {fmt(result.p99_ms, 2)} ms, "
        f"{result.rps:,.0f} answers/s, errors {result.errors}, non-2xx {result.bad_status}, "
        f"sender lag p99 {fmt(result.sender_lag_p99_ms, 2)} ms"
    )
    return result


def profile_me(
    server: Server, wrk: str | None, inputs: Inputs, out_dir: Path, seconds: int = 10
) -> Path | None:
    """py-spy the server while /v1/me runs at 64 connections; returns the collapsed stacks."""
    raw = out_dir / f"{NAME}-me-profile.collapsed"
    out_dir.mkdir(parents=True, exist_ok=True)
    load = threading.Thread(
        target=run_saturation,
        args=(wrk, inputs.me),
        kwargs={"connections": CONNECTIONS, "duration_s": seconds + 4},
        daemon=True,
    )
    load.start()
    time.sleep(2)
    log(f"profiling the server under /v1/me load for {seconds}s (py-spy)")
    ok = profile_server(server.pid, seconds, raw)
    load.join()
    return raw if ok else None


def results_document(
    measured: dict[str, Measured], machine: dict[str, Any], plan: Plan, wrk: str | None, date: str
) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for name, m in measured.items():
        runs[name] = {
            "rps": round(m.saturation.rps, 1),
            "p50_ms": m.fixed.p50_ms,
            "p95_ms": m.fixed.p95_ms,
            "p99_ms": m.fixed.p99_ms,
            "saturation": m.saturation.as_dict(),
            "fixed_rate": m.fixed.as_dict(),
        }
        if m.half_load is not None:
            runs[name]["half_load"] = m.half_load.as_dict()
    base_rps = measured["baseline"].saturation.rps
    ratio_me = round(measured["me"].saturation.rps / base_rps, 3) if base_rps else None
    ratio_refresh = round(measured["refresh"].saturation.rps / base_rps, 3) if base_rps else None
    me_p99 = measured["me"].fixed.p99_ms
    return {
        "date": date,
        "machine": machine,
        "runs": runs,
        "ratios": {"me_vs_baseline_rps": ratio_me, "refresh_vs_baseline_rps": ratio_refresh},
        "targets": {
            "me_vs_baseline_rps": {
                "min": TARGET_ME_VS_BASELINE,
                "value": ratio_me,
                "met": ratio_me is not None and ratio_me >= TARGET_ME_VS_BASELINE,
            },
            "me_p99_ms_at_1000_rps": {
                "max": TARGET_ME_P99_MS,
                "value": me_p99,
                "met": me_p99 is not None and me_p99 < TARGET_ME_P99_MS,
            },
        },
        "setup": {
            "members": plan.members,
            "api_workers": 1,
            "connections": CONNECTIONS,
            "saturation_seconds": plan.saturation_s,
            "saturation_rounds": ROUNDS,
            "saturation_tool": "wrk" if wrk else "python-closed-loop (aiohttp)",
            "fixed_rate_rps": FIXED_RATE,
            "fixed_rate_seconds": plan.fixed_s,
            "fixed_rate_tool": "bench.common.run_constant_rate (aiohttp, open loop)",
        },
    }


WORKLOAD_TITLES = {
    "baseline": "`GET /bench/baseline/{id}` (baseline)",
    "me": "`GET /v1/me`",
    "refresh": "`POST /v1/auth/refresh`",
}


def _latency_cell(run_: dict[str, Any] | None) -> str:
    if run_ is None:
        return "–"
    cell = f"{fmt(run_.get('p50_ms'), 2)} / {fmt(run_.get('p95_ms'), 2)} / {fmt(run_.get('p99_ms'), 2)}"
    extra = run_.get("extra", {})
    if extra.get("overloaded"):
        cell += (
            f" (overloaded: {fmt(run_.get('rps'), 0)} answers/s, {run_.get('errors', 0)} failed or timed out)"
        )
    odd = {k: v for k, v in extra.get("statuses", {}).items() if not k.startswith("2")}
    if odd:
        cell += " (answers " + ", ".join(f"{k}: {v}" for k, v in sorted(odd.items())) + ")"
    return cell


def markdown_section(doc: dict[str, Any]) -> str:
    setup = doc["setup"]
    lines = [
        "## identity: `GET /v1/me` and `POST /v1/auth/refresh`",
        "",
        f"- Date: {doc['date']}",
        f"- Machine: {machine_line(doc['machine'])}",
        f"- Setup: {setup['members']:,} seeded members, one API worker (`referloop serve --workers 1`), "
        f"PostgreSQL, Redis and the load generators on the same machine. Saturation: "
        f"{setup['connections']} connections for {setup['saturation_seconds']:g} s ({setup['saturation_tool']}), "
        f"in {setup['saturation_rounds']} rounds taken in turn by the three workloads. "
        f"Latency: a fixed {setup['fixed_rate_rps']:,.0f} rps for {setup['fixed_rate_seconds']:g} s "
        f"({setup['fixed_rate_tool']}), measured from each request's intended send time; where that is "
        "past the route's capacity, also at half its saturation rate.",
        "",
        f"| workload | rps at {setup['connections']} conn. | server CPU (cores) | server CPU per request (µs) "
        "| DB connections opened "
        f"| p50 / p95 / p99 ms at {setup['fixed_rate_rps']:,.0f} rps | p50 / p95 / p99 ms at half load |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, run_ in doc["runs"].items():
        sat, half = run_["saturation"], run_.get("half_load")
        half_cell = "–" if half is None else f"{_latency_cell(half)} at {fmt(half.get('target_rps'), 0)} rps"
        lines.append(
            f"| {WORKLOAD_TITLES.get(name, name)} | {fmt(run_['rps'], 0)} | {fmt(sat.get('server_cpu_cores'), 2)} "
            f"| {sat.get('extra', {}).get('server_cpu_us_per_request', '–')} "
            f"| {sat.get('extra', {}).get('db_connections_opened', '–')} "
            f"| {_latency_cell(run_['fixed_rate'])} | {half_cell} |"
        )
    t = doc["targets"]
    ratio, p99 = t["me_vs_baseline_rps"], t["me_p99_ms_at_1000_rps"]
    refresh_ratio = doc["ratios"]["refresh_vs_baseline_rps"]
    lines += [
        "",
        "Targets (issue 3): `GET /v1/me` reaches at least 60 % of the baseline's rps, and its p99 at "
        "1,000 rps stays under 25 ms, on 2 cores with one API worker.",
        "",
        f"- `/v1/me` rps vs baseline: **{fmt(100 * ratio['value'] if ratio['value'] is not None else None, 0)} %** "
        f"(target >= 60 %): {'met' if ratio['met'] else '**missed**'}",
        f"- `/v1/me` p99 at 1,000 rps: **{fmt(p99['value'], 2)} ms** (target < 25 ms): "
        f"{'met' if p99['met'] else '**missed**'}",
        f"- `/v1/auth/refresh` rps vs baseline: {fmt(100 * refresh_ratio if refresh_ratio else None, 0)} % "
        "(no target)",
    ]
    profile = doc.get("profile")
    if profile:
        lines += [
            "",
            f"Where the API worker's time goes under `/v1/me` load (py-spy, {profile['samples']:,} samples; "
            f"stacks in `bench/.work/{NAME}-me-profile.collapsed`, not kept in git). By the library the innermost Python "
            "frame belongs to (C code, including socket system calls, is charged to the Python function "
            "that called it):",
            "",
            "| component | share of samples % |",
            "| --- | ---: |",
        ]
        lines += [f"| {name} | {share:.1f} |" for name, share in profile["components"].items()]
        lines += [
            "",
            "Our functions, inclusive (SQLAlchemy runs queries in greenlets, whose frames py-spy shows as "
            "separate stacks, so a function's share excludes the SQL it awaits through the ORM):",
            "",
            "| function | inclusive % |",
            "| --- | ---: |",
        ]
        lines += [f"| `{row['function']}` | {row['inclusive_pct']:.1f} |" for row in profile["our_functions"]]
    return "\n".join(lines)


# Frames that wrap every request and say nothing about where its time goes.
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


def run(options: BenchOptions) -> dict[str, Any]:
    from referloop.core.security.tokens import generate_private_pem

    plan = Plan.for_options(options)
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="referloop-bench-"))
    db_name = f"referloop_bench_{NAME}_{os.getpid()}"
    try:
        started = time.monotonic()
        log(f"fresh database {db_name} and migrations")
        database_url = fresh_database(options.admin_database_url, db_name)
        log(f"seeding {plan.members:,} members, sessions and refresh tokens with COPY")
        seeded = asyncio.run(seed(database_url, plan.members))
        pem = generate_private_pem()
        access_tokens = mint_access_tokens(pem, seeded)
        log(f"seeded and minted tokens in {time.monotonic() - started:.1f}s")
        machine = machine_info(asyncio.run(postgres_version(database_url)))
        server = Server(server_settings(database_url, options.redis_url, workdir / "var", pem), workdir)
        with server:
            inputs = write_inputs(workdir, server.base_url, seeded, access_tokens, plan)
            smoke_check(inputs)
            measured = measure(server, wrk, inputs, plan, database_url)
            doc = results_document(measured, machine, plan, wrk, now_iso())
            missed = not all(t["met"] for t in doc["targets"].values())
            if options.profile or (missed and not options.quick):
                writing = options.write and not options.quick
                raw = profile_me(server, wrk, inputs, WORK_DIR if writing else workdir)
                if raw is not None:
                    doc["profile"] = profile_summary(raw)
        section = markdown_section(doc)
        if options.write and not options.quick:
            write_json(NAME, doc)
            write_results_md(NAME, section)
            log(f"wrote {RESULTS_DIR / (NAME + '.json')} and bench/RESULTS.md")
        print(section, flush=True)
        return doc
    finally:
        if not options.keep_db:
            drop_database(options.admin_database_url, db_name)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept database {db_name} and {workdir}")
