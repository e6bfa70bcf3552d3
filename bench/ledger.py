"""Ledger and withdrawals benchmark (issue "Money", section 6).

In one run, on one fresh database and at one client count:
- `pgbench`: PostgreSQL's built-in TPC-B-like script (three UPDATEs, one SELECT, one INSERT per
  transaction), scale = clients: the baseline, measured in the same run so that ratios hold on a
  noisy machine;
- `postings`: `ledger.move` of 1 unit between two random members through the internal API, one
  transaction each, in this process (asyncio on uvloop, one session and connection per client);
- `hot_sharded` / `hot_single`: the hot-account case, every entry moving 1 unit from a random member
  into ONE platform account: `fees` (split into PLATFORM_SHARDS rows, one picked per entry) and
  `adjustments` (one row, not split). The gap between the two is what the shards buy;
- `withdrawals`: `POST /v1/withdrawals` through HTTP against `referloop serve`, driven by wrk (the
  Python runner where wrk cannot be had) so that the load generator takes little of the two cores:
  members in turn, a fresh Idempotency-Key per request; each request holds the amount, records the
  withdrawal, and is approved automatically (two audited transitions and two outbox events).
Targets: postings >= 50 % of pgbench's tps, withdrawals >= 30 %. Reconcile must find nothing after.
When the withdrawal target is missed (or with --profile) the server is sampled with py-spy under that
load. BENCH_LEDGER_HTTP_WORKERS sets the API's process count (default 2: with wrk as the load
generator, two workers made 125-182 withdrawals/s where one made 91-108, one core being the limit).
Every run also records where the CPU went per transaction (the whole machine, PostgreSQL, the rest),
and from it the ratio each workload could reach at most if nothing but PostgreSQL cost anything."""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    WORK_DIR,
    BenchOptions,
    LoadResult,
    Server,
    Workload,
    cpu_per_unit,
    cpu_sample,
    database_url_for,
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
    run_saturation,
    write_items,
    write_json,
    write_results_md,
)
from bench.identity import mint_access_tokens, profile_summary, seed, server_settings

NAME = "ledger"
CLIENTS = 16
HTTP_WORKERS = int(os.environ.get("BENCH_LEDGER_HTTP_WORKERS", "2"))  # API processes
FUNDING = 10**12  # minor units per member: never the limit during a run
WITHDRAWAL_AMOUNT = 100  # 1.00 INR, the default minimum: auto-approved
TARGET_POSTINGS = 0.50
TARGET_WITHDRAWALS = 0.30
PROFILE_S = 10  # py-spy's sampling time under withdrawal load

Work = Callable[[Any, random.Random], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    members: int
    duration_s: float
    warmup_s: float

    @classmethod
    def for_options(cls, options: BenchOptions) -> Plan:
        if options.quick:
            return cls(members=300, duration_s=3, warmup_s=1)
        return cls(members=3_000, duration_s=20, warmup_s=3)


# --------------------------------------------------------------------------------------------------
# Baseline


def pgbench(url: str, clients: int, duration_s: float) -> dict[str, Any]:
    """pgbench's TPC-B-like script in the benchmark's own database (its pgbench_* tables)."""
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(clients), url], check=True, capture_output=True, text=True
    )
    time.sleep(1.0)  # the initialising backend's exit lands in PostgreSQL's CPU time: not in the run's
    before = cpu_sample()
    out = subprocess.run(
        [
            "pgbench",
            "-n",
            "-b",
            "tpcb-like",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(round(duration_s)),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    after = cpu_sample()
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return {
        "tps": round(float(tps.group(1)), 1) if tps else 0.0,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "failed": int(failed.group(1)) if failed else 0,
        "clients": clients,
        "scale": clients,
        "duration_s": duration_s,
        "cpu_ms_per_txn": cpu_per_unit(before, after, int(processed.group(1)) if processed else 0),
    }


# --------------------------------------------------------------------------------------------------
# Data


async def payout_methods(url: str, member_ids: list[uuid.UUID], field_keys: str) -> list[uuid.UUID]:
    """One bank account per member, encrypted as the methods service does, past its cool-down."""
    import asyncpg
    import orjson

    from referloop.core.ids import uuid7
    from referloop.core.security.fields import FieldCipher
    from referloop.payouts.methods.service import _DETAILS_CONTEXT

    cipher = FieldCipher.from_setting(field_keys)
    now = datetime.now(UTC)
    ids = [uuid7() for _ in member_ids]
    rows = []
    for method_id, member_id in zip(ids, member_ids, strict=True):
        number = str(random.randint(10**11, 10**12 - 1))
        details = {
            "kind": "bank_account",
            "holder_name": "Bench Member",
            "account_number": number,
            "ifsc": "HDFC0001234",
        }
        rows.append(
            (
                method_id,
                member_id,
                "bank_account",
                cipher.encrypt(orjson.dumps(details).decode(), context=_DETAILS_CONTEXT),
                cipher.primary_kid,
                f"HDFC ••••{number[-4:]}",
                secrets.token_bytes(32),
                now - timedelta(days=2),
                now,
                now,
            )
        )
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "payout_methods",
            records=rows,
            columns=[
                "id",
                "member_id",
                "kind",
                "details_encrypted",
                "key_id",
                "masked",
                "fingerprint",
                "usable_from",
                "created_at",
                "updated_at",
            ],
        )
        await conn.execute("ANALYZE payout_methods")
    finally:
        await conn.close()
    return ids


async def fund(url: str, member_ids: list[uuid.UUID], clients: int) -> float:
    """Credit every member through the ledger's API; returns entries per second."""
    from referloop import ledger

    source = ledger.platform_account(ledger.AccountCode.adjustments, "bench-funding")

    async def credit(session: Any, member_id: uuid.UUID) -> None:
        await ledger.move(
            session,
            entry_type="bench.fund",
            source=source,
            destination=ledger.member_account(member_id),
            amount=FUNDING,
            currency="INR",
            idempotency_key=f"bench-fund:{member_id}",
        )

    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=clients, max_overflow=0)
    queue = list(member_ids)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            member_id = queue.pop()
            async with db.sessionmaker() as session, session.begin():
                await credit(session, member_id)

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        await db.dispose()
    return len(member_ids) / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# Internal API workloads


def workloads(member_ids: list[uuid.UUID]) -> dict[str, Work]:
    from referloop import ledger

    async def postings(session: Any, rng: random.Random) -> None:
        a, b = rng.sample(member_ids, 2)
        await ledger.move(
            session,
            entry_type="bench.transfer",
            source=ledger.member_account(a),
            destination=ledger.member_account(b),
            amount=1,
            currency="INR",
            idempotency_key=f"bench:{uuid.uuid4()}",
        )

    def into(account: ledger.AccountRef) -> Work:
        async def hot(session: Any, rng: random.Random) -> None:
            await ledger.move(
                session,
                entry_type="bench.hot",
                source=ledger.member_account(rng.choice(member_ids)),
                destination=account,
                amount=1,
                currency="INR",
                idempotency_key=f"bench:{uuid.uuid4()}",
            )

        return hot

    return {
        "postings": postings,
        "hot_sharded": into(ledger.platform_account(ledger.AccountCode.fees, "bench")),
        "hot_single": into(ledger.platform_account(ledger.AccountCode.adjustments, "bench")),
    }


async def drive(url: str, clients: int, plan: Plan, work: Work) -> dict[str, Any]:
    """`clients` tasks, each running `work` in its own transaction, back to back, for the duration."""
    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=clients, max_overflow=0)
    latencies: list[float] = []
    done = errors = finished = 0
    start = time.perf_counter()
    measure_from = start + plan.warmup_s
    stop_at = measure_from + plan.duration_s

    async def client(seed_: int) -> None:
        nonlocal done, errors, finished
        rng = random.Random(seed_)
        while (began := time.perf_counter()) < stop_at:
            try:
                async with db.sessionmaker() as session, session.begin():
                    await work(session, rng)
            except Exception:
                errors += 1
                continue
            finished += 1
            if began >= measure_from:
                done += 1
                latencies.append(time.perf_counter() - began)

    cpu0, before = time.process_time(), cpu_sample()
    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        await db.dispose()
    wall = time.perf_counter() - start
    after = cpu_sample()
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)
            if latencies
            else None
        )

    return {
        "tps": round(done / plan.duration_s, 1),
        "transactions": done,
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "clients": clients,
        "duration_s": plan.duration_s,
        "client_cpu_cores": round((time.process_time() - cpu0) / wall, 2),
        # Warm-up included on both sides: CPU over the whole run, per entry over the whole run.
        "cpu_ms_per_txn": cpu_per_unit(before, after, finished),
    }


def run_internal(url: str, clients: int, plan: Plan, work: Work) -> dict[str, Any]:
    try:
        import uvloop

        result: dict[str, Any] = uvloop.run(drive(url, clients, plan, work))
    except ImportError:
        result = asyncio.run(drive(url, clients, plan, work))
    return result


async def reconcile(url: str) -> int:
    from referloop import ledger
    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=1, max_overflow=0)
    try:
        async with db.sessionmaker() as session:
            report = await ledger.reconcile(session)
            for d in report.discrepancies[:10]:
                log(f"  reconcile: {d}")
            return len(report.discrepancies)
    finally:
        await db.dispose()


# --------------------------------------------------------------------------------------------------
# HTTP workload


# Requests per second no run here comes near: each phase gets this many items per second it lasts,
# so that no wrk thread runs out of fresh Idempotency-Keys.
WITHDRAWAL_ITEMS_PER_S = 1_000


def withdrawal_workload(
    url: str, phase: str, workdir: Path, tokens: list[str], method_ids: list[uuid.UUID], seconds: float
) -> Workload:
    """One phase's requests, each with its own Idempotency-Key, round-robin over the members: keys
    are never reused (a replay is cheaper than a withdrawal and would flatter the figure)."""
    lines = []
    for i in range(int(seconds * WITHDRAWAL_ITEMS_PER_S) + len(tokens)):
        member = i % len(tokens)
        body = f'{{"amount":{WITHDRAWAL_AMOUNT},"currency":"INR","payout_method_id":"{method_ids[member]}"}}'
        lines.append(f"{tokens[member]} {uuid.uuid4()} {body}")
    items = write_items(workdir / f"withdrawals-{phase}.txt", lines)
    return Workload(f"withdrawals-{phase}", url, "bearer-post", items, once=True)


def smoke_check(workload: Workload) -> None:
    import httpx

    method, url, headers, body = workload.request_parts(workload.items()[0])
    r = httpx.request(method, url, headers=headers, content=body, timeout=10)
    if r.status_code != 201 or r.json().get("state") != "approved":
        raise RuntimeError(f"POST /v1/withdrawals answered {r.status_code}: {r.text[:500]}")


def run_withdrawals(
    server: Server, wrk: str | None, phases: dict[str, Workload], plan: Plan, url: str
) -> dict[str, Any]:
    run_saturation(wrk, phases["warmup"], connections=CLIENTS, duration_s=plan.warmup_s)
    cpu: dict[str, float] = {}
    with measure_cpu(server, cpu, url):
        before = cpu_sample()
        result: LoadResult = run_saturation(
            wrk, phases["measured"], connections=CLIENTS, duration_s=plan.duration_s
        )
        after = cpu_sample()
    if "statuses" in result.extra:  # the Python runner counts each status
        ok = result.extra["statuses"].get("201", 0)
    else:  # wrk counts answers outside 2xx/3xx; every key is fresh, so a 2xx here is a 201
        ok = result.requests - result.bad_status  # socket errors are not among the answers counted
    return {
        "tps": round(ok / result.duration_s, 1),
        "requests": result.requests,
        "created": ok,
        "errors": result.errors,
        "bad_status": result.bad_status,
        "p50_ms": result.p50_ms,
        "p95_ms": result.p95_ms,
        "p99_ms": result.p99_ms,
        "clients": CLIENTS,
        "duration_s": round(result.duration_s, 2),
        "server_cpu_cores": cpu.get("cores"),
        "server_cpu_ms_per_request": round(cpu["cores"] * result.duration_s * 1000 / result.requests, 3)
        if cpu.get("cores") and result.requests
        else None,
        "cpu_ms_per_txn": cpu_per_unit(before, after, result.requests),
        "server_workers": HTTP_WORKERS,
        "tool": result.tool,
    }


def http_floor(server: Server, wrk: str | None, workdir: Path, plan: Plan) -> dict[str, Any]:
    """What the least request through this HTTP stack costs the API server: `GET /bench/redirect/x`,
    a 302 through the same middleware and router that does nothing else, at the same connections."""
    bare = Workload(
        "bare-302",
        f"{server.base_url}/bench/redirect/",
        "path",
        write_items(workdir / "bare.txt", ["a", "b", "c", "d"]),
    )
    cpu: dict[str, float] = {}
    with measure_cpu(server, cpu):
        result = run_saturation(wrk, bare, connections=CLIENTS, duration_s=min(plan.duration_s, 10.0))
    per_request = cpu["cores"] * result.duration_s * 1000 / result.requests if result.requests else None
    return {
        "rps": round(result.rps, 1),
        "server_cpu_cores": cpu.get("cores"),
        "server_cpu_ms_per_request": round(per_request, 3) if per_request else None,
        "tool": result.tool,
    }


def profile_withdrawals(
    server: Server, wrk: str | None, workload: Workload, out_dir: Path, seconds: int = PROFILE_S
) -> Path | None:
    """py-spy the server while withdrawals run at CLIENTS connections; returns the collapsed stacks."""
    raw = out_dir / f"{NAME}-withdrawals-profile.collapsed"
    out_dir.mkdir(parents=True, exist_ok=True)
    load = threading.Thread(
        target=run_saturation,
        args=(wrk, workload),
        kwargs={"connections": CLIENTS, "duration_s": seconds + 4},
        daemon=True,
    )
    load.start()
    time.sleep(2)
    log(f"profiling the server under withdrawal load for {seconds}s (py-spy)")
    ok = profile_server(server.pid, seconds, raw)
    load.join()
    return raw if ok else None


# --------------------------------------------------------------------------------------------------
# The run


def run(options: BenchOptions) -> dict[str, Any]:
    from referloop.core.security.tokens import generate_private_pem

    plan = Plan.for_options(options)
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="referloop-bench-ledger-"))
    db_name = f"referloop_bench_{NAME}_{os.getpid()}"
    try:
        log(f"fresh database {db_name} and migrations")
        url = fresh_database(options.admin_database_url, db_name)
        version = asyncio.run(postgres_version(url))
        log(f"seeding {plan.members:,} members, sessions and payout methods with COPY")
        seeded = asyncio.run(seed(url, plan.members))
        pem = generate_private_pem()
        settings_env = server_settings(url, options.redis_url, workdir / "var", pem)
        method_ids = asyncio.run(
            payout_methods(url, seeded.user_ids, settings_env["REFERLOOP_FIELD_ENCRYPTION_KEYS"])
        )
        log("funding every member through the ledger")
        funding_tps = asyncio.run(fund(url, seeded.user_ids, CLIENTS))

        runs: dict[str, Any] = {}
        log(f"pgbench tpcb-like: {CLIENTS} clients, {plan.duration_s:g} s")
        runs["pgbench_tpcb"] = pgbench(
            database_url_for(options.admin_database_url, db_name), CLIENTS, plan.duration_s
        )
        log(f"  {runs['pgbench_tpcb']['tps']} tps")
        for name, work in workloads(seeded.user_ids).items():
            log(f"{name}: {CLIENTS} clients, {plan.duration_s:g} s")
            runs[name] = run_internal(url, CLIENTS, plan, work)
            log(f"  {runs[name]['tps']} tps, p99 {runs[name]['p99_ms']} ms, errors {runs[name]['errors']}")

        tokens = mint_access_tokens(pem, seeded)
        wrk = ensure_wrk()
        server = Server(settings_env, workdir, workers=HTTP_WORKERS)
        with server:
            endpoint = f"{server.base_url}/v1/withdrawals"
            phases = {
                phase: withdrawal_workload(endpoint, phase, workdir, tokens, method_ids, seconds)
                for phase, seconds in (
                    ("warmup", plan.warmup_s),
                    ("measured", plan.duration_s),
                    ("profile", PROFILE_S + 4),
                )
            }
            smoke_check(phases["warmup"])
            log(f"withdrawals over HTTP: {CLIENTS} connections, {plan.duration_s:g} s")
            runs["withdrawals"] = run_withdrawals(server, wrk, phases, plan, url)
            w = runs["withdrawals"]
            log(f"  {w['tps']} created/s, p99 {w['p99_ms']} ms, server CPU {w['server_cpu_cores']} cores")
            runs["http_floor"] = http_floor(server, wrk, workdir, plan)
            log(
                f"  the bare 302 costs the server {runs['http_floor']['server_cpu_ms_per_request']} ms a request"
            )
            base = runs["pgbench_tpcb"]["tps"]
            missed = not base or w["tps"] / base < TARGET_WITHDRAWALS
            raw = None
            if options.profile or (missed and not options.quick):
                writing = options.write and not options.quick
                raw = profile_withdrawals(server, wrk, phases["profile"], WORK_DIR if writing else workdir)
        discrepancies = asyncio.run(reconcile(url))
        log(f"reconcile: {discrepancies} difference(s)")
        doc = results_document(runs, machine_info(version), plan, funding_tps, discrepancies, load_before)
        if raw is not None:
            doc["profile"] = profile_summary(raw)
        section = markdown_section(doc)
        if options.write and not options.quick:
            write_json(NAME, doc)
            write_results_md(NAME, section)
            log("wrote bench/results/ledger.json and bench/RESULTS.md")
        print(section, flush=True)
        return doc
    finally:
        if not options.keep_db:
            drop_database(options.admin_database_url, db_name)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept database {db_name} and {workdir}")


def results_document(
    runs: dict[str, Any],
    machine: dict[str, Any],
    plan: Plan,
    funding_tps: float,
    discrepancies: int,
    load_before: float,
) -> dict[str, Any]:
    base = runs["pgbench_tpcb"]["tps"]

    def ratio(name: str) -> float | None:
        return round(runs[name]["tps"] / base, 3) if base else None

    ratios = {
        "postings_vs_pgbench_tps": ratio("postings"),
        "withdrawals_vs_pgbench_tps": ratio("withdrawals"),
        "hot_sharded_vs_pgbench_tps": ratio("hot_sharded"),
        "hot_single_vs_pgbench_tps": ratio("hot_single"),
    }

    def ceiling(name: str, extra_ms: float | None = 0.0) -> float | None:
        # The ratio to pgbench's measured tps if every core of the machine did nothing but `name`'s
        # PostgreSQL work (plus `extra_ms` a transaction): cores / CPU per transaction.
        postgres_ms = runs.get(name, {}).get("cpu_ms_per_txn", {}).get("postgres_ms")
        cores = machine.get("cores")
        if not (postgres_ms and cores and base) or extra_ms is None:
            return None
        return round(float(cores) * 1000 / (float(postgres_ms) + extra_ms) / float(base), 3)

    floor_ms = runs.get("http_floor", {}).get("server_cpu_ms_per_request")
    ceilings = {
        "postings_vs_pgbench_tps": ceiling("postings"),
        "withdrawals_vs_pgbench_tps": ceiling("withdrawals"),
        "withdrawals_with_a_bare_302_vs_pgbench_tps": ceiling("withdrawals", floor_ms),
    }
    targets = {
        name: {"min": minimum, "value": ratios[name], "met": (ratios[name] or 0) >= minimum}
        for name, minimum in (
            ("postings_vs_pgbench_tps", TARGET_POSTINGS),
            ("withdrawals_vs_pgbench_tps", TARGET_WITHDRAWALS),
        )
    }
    return {
        "date": now_iso(),
        "machine": machine,
        "runs": runs,
        "ratios": ratios,
        "ceilings_if_only_postgres_cost": ceilings,
        "targets": targets,
        "setup": {
            "members": plan.members,
            "clients": CLIENTS,
            "duration_s": plan.duration_s,
            "warmup_s": plan.warmup_s,
            "http_workers": HTTP_WORKERS,
            "withdrawal_amount": WITHDRAWAL_AMOUNT,
            "funding_entries_per_s": round(funding_tps, 1),
            "reconcile_discrepancies_after": discrepancies,
            # Other work on the machine moves every figure: the 1-minute load average before and after.
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }


def _platform_shards() -> int:
    from referloop.ledger.service.accounts import PLATFORM_SHARDS

    return PLATFORM_SHARDS


def markdown_section(doc: dict[str, Any]) -> str:
    r, ratios, setup = doc["runs"], doc["ratios"], doc["setup"]

    def row(name: str, label: str) -> str:
        ratio = "–" if name == "pgbench_tpcb" else fmt(ratios.get(f"{name}_vs_pgbench_tps"), 2)
        return f"| {label} | {fmt(r[name]['tps'])} | {fmt(r[name].get('p50_ms'), 2)} | {fmt(r[name].get('p99_ms'), 2)} | {ratio} |"

    met = {k: "met" if v["met"] else "MISSED" for k, v in doc["targets"].items()}

    def cpu_row(name: str, label: str) -> str:
        cpu = r[name].get("cpu_ms_per_txn") or {}
        return f"| {label} | {fmt(cpu.get('machine_ms'), 3)} | {fmt(cpu.get('postgres_ms'), 3)} | {fmt(cpu.get('rest_ms'), 3)} |"

    ceilings = doc.get("ceilings_if_only_postgres_cost", {})
    profile = ""
    if "profile" in doc:
        parts = ", ".join(
            f"{name} {share}%" for name, share in list(doc["profile"]["components"].items())[:8]
        )
        profile = f"\n\nServer profile under withdrawal load (py-spy, share of samples by innermost frame): {parts}."
    return f"""## Ledger and withdrawals ({doc["date"]})

{machine_line(doc["machine"])}. {setup["clients"]} clients everywhere, {setup["members"]:,} members,
{setup["duration_s"]:g} s per workload after {setup["warmup_s"]:g} s of warm-up; the API ran as
`referloop serve --workers {setup["http_workers"]}`. Load average before/after: {setup["load_average"]}.
Reconcile after the run: {setup["reconcile_discrepancies_after"]} difference(s).

| workload | tps | p50 ms | p99 ms | vs pgbench |
| --- | ---: | ---: | ---: | ---: |
{row("pgbench_tpcb", "pgbench TPC-B-like (baseline)")}
{row("postings", "ledger postings, member to member (internal API)")}
{row("withdrawals", "POST /v1/withdrawals (HTTP)")}
{row("hot_sharded", f"hot account: all into `fees` ({_platform_shards()} shards)")}
{row("hot_single", "hot account: all into `adjustments` (one row)")}

Targets: postings >= {TARGET_POSTINGS:.0%} of pgbench ({met["postings_vs_pgbench_tps"]}), withdrawals
>= {TARGET_WITHDRAWALS:.0%} ({met["withdrawals_vs_pgbench_tps"]}).

Where the CPU went, per transaction (all cores busy in every run; "the rest" is the Python client or
API server, the load generator and the kernel):

| workload | whole machine, ms | PostgreSQL, ms | the rest, ms |
| --- | ---: | ---: | ---: |
{cpu_row("pgbench_tpcb", "pgbench TPC-B-like")}
{cpu_row("postings", "ledger postings")}
{cpu_row("withdrawals", "POST /v1/withdrawals")}

If the machine's {doc["machine"].get("cores")} cores did nothing but PostgreSQL's work for each, postings
could reach at most {fmt(ceilings.get("postings_vs_pgbench_tps"), 2)} of pgbench's measured tps and
withdrawals at most {fmt(ceilings.get("withdrawals_vs_pgbench_tps"), 2)}. Adding only what the least
request through this HTTP stack costs the API server (a bare 302: {fmt(r.get("http_floor", {}).get("server_cpu_ms_per_request"), 3)} ms),
withdrawals could reach at most {fmt(ceilings.get("withdrawals_with_a_bare_302_vs_pgbench_tps"), 2)}. A
withdrawal's database work is the idempotency record, the hold's entry, postings and balances, the
pending transfer, the withdrawal, two outbox events, two chained audit rows and the limits read.

The hot account: an entry locks the balance rows it moves, so entries into one row queue behind each
other (`hot_single`). Platform accounts that many entries touch (reward expense, payout clearing,
settlement, fees, game prizes) are split into shards, one picked at random per entry, and the
account's balance is the sum of its shards; `hot_sharded` is that design under the same load. Member
wallets need no shards: each belongs to one member, whose own requests are few.{profile}
"""
