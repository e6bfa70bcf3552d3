"""`ledger_postings`: ledger entries per second through the internal API, against pgbench's TPC-B.

Same database, same run, same client count:
- `pgbench`: the built-in TPC-B-like script (3 UPDATEs, 1 SELECT, 1 INSERT per transaction) at
  scale = clients, the baseline;
- `pairs`: `ledger.move` of 1 unit between two random members of a funded pool (two-legged entries,
  each its own transaction: lock both rows in id order, one guarded statement, commit);
- `hot_sharded`: every entry from the same platform account (reward expense, split into
  PLATFORM_SHARDS rows) to a random member;
- `hot_single`: every entry from one platform account that is not sharded (adjustments): all of
  them serialise on that one row lock. The gap between the two is what sharding buys.
The load runs in this process (asyncio on uvloop, one session and connection per worker), calling
the same functions the referral, payout and game code call."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import (
    BenchOptions,
    database_url_for,
    drop_database,
    fmt,
    fresh_database,
    log,
    machine_info,
    machine_line,
    now_iso,
    postgres_version,
    write_json,
    write_results_md,
)

NAME = "ledger_postings"
CLIENTS = 16
MEMBERS = 5_000
DURATION_S = 20
WARMUP_S = 3
FUNDING = 10**9


def _pgbench(url: str, clients: int, duration: int, scale: int) -> dict[str, Any]:
    subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), url], check=True, capture_output=True, text=True)
    out = subprocess.run(
        ["pgbench", "-n", "-b", "tpcb-like", "-c", str(clients), "-j", "2", "-T", str(duration), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return {
        "tps": float(tps.group(1)) if tps else None,
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "failed": int(failed.group(1)) if failed else 0,
        "clients": clients,
        "scale": scale,
        "duration_s": duration,
    }


async def _seed(url: str, members: int) -> list[uuid.UUID]:
    import asyncpg

    from referloop.core.ids import uuid7

    ids = [uuid7() for _ in range(members)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "users",
            columns=["id", "email", "password_hash", "display_name", "referral_code"],
            records=[(i, f"b{i.hex}@example.com", "!", "Bench", i.hex[-8:].upper()) for i in ids],
        )
    finally:
        await conn.close()
    return ids


async def _drive(
    url: str,
    clients: int,
    duration: float,
    warmup: float,
    work: Callable[[Any, random.Random], Awaitable[None]],
) -> dict[str, Any]:
    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=clients, max_overflow=0)
    done = 0
    errors = 0
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker(seed: int) -> None:
        nonlocal done, errors
        rng = random.Random(seed)
        while (now := time.perf_counter()) < stop_at:
            try:
                async with db.sessionmaker() as session, session.begin():
                    await work(session, rng)
            except Exception:
                errors += 1
                continue
            if now >= measure_from:
                done += 1
                latencies.append(time.perf_counter() - now)

    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(worker(i) for i in range(clients)))
    finally:
        await db.dispose()
    client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - start)
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)
            if latencies
            else None
        )

    return {
        "tps": round(done / duration, 1),
        "transactions": done,
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "clients": clients,
        "duration_s": duration,
        "client_cpu_cores": round(client_cpu, 2),
    }


def _workloads(members: list[uuid.UUID]) -> dict[str, Callable[[Any, random.Random], Awaitable[None]]]:
    from referloop import ledger

    sharded = ledger.platform_account(ledger.AccountCode.reward_expense, "bench")
    single = ledger.platform_account(ledger.AccountCode.adjustments, "bench")

    async def pairs(session: Any, rng: random.Random) -> None:
        a, b = rng.sample(members, 2)
        await ledger.move(
            session,
            entry_type="bench.pay",
            source=ledger.member_account(a),
            destination=ledger.member_account(b),
            amount=1,
            currency="INR",
            idempotency_key=f"bench:{uuid.uuid4()}",
        )

    def from_platform(account: ledger.AccountRef) -> Callable[[Any, random.Random], Awaitable[None]]:
        async def reward(session: Any, rng: random.Random) -> None:
            await ledger.move(
                session,
                entry_type="bench.reward",
                source=account,
                destination=ledger.member_account(rng.choice(members)),
                amount=1,
                currency="INR",
                idempotency_key=f"bench:{uuid.uuid4()}",
            )

        return reward

    return {"pairs": pairs, "hot_sharded": from_platform(sharded), "hot_single": from_platform(single)}


async def _fund(url: str, members: list[uuid.UUID], clients: int) -> None:
    from referloop import ledger
    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=clients, max_overflow=0)
    source = ledger.platform_account(ledger.AccountCode.reward_expense, "bench-funding")
    queue = list(members)

    async def worker() -> None:
        while queue:
            member = queue.pop()
            async with db.sessionmaker() as session, session.begin():
                await ledger.move(
                    session,
                    entry_type="bench.fund",
                    source=source,
                    destination=ledger.member_account(member),
                    amount=FUNDING,
                    currency="INR",
                    idempotency_key=f"bench-fund:{member}",
                )

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        await db.dispose()


async def _reconcile(url: str) -> int:
    from referloop import ledger
    from referloop.core.db import Database, to_asyncpg_url

    db = Database(to_asyncpg_url(url), pool_size=1, max_overflow=0)
    try:
        async with db.sessionmaker() as session:
            return len((await ledger.reconcile(session)).discrepancies)
    finally:
        await db.dispose()


def run(options: BenchOptions) -> dict[str, Any]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    load_before = os.getloadavg()
    members_n = 500 if options.quick else MEMBERS
    duration = 3 if options.quick else DURATION_S
    warmup = 1 if options.quick else WARMUP_S
    name = f"referloop_bench_ledger_{uuid.uuid4().hex[:8]}"
    log(f"fresh database {name}")
    url = fresh_database(options.admin_database_url, name)
    try:
        version = asyncio.run(postgres_version(url))
        members = asyncio.run(_seed(url, members_n))
        log(f"funding {members_n} members through the ledger")
        t0 = time.perf_counter()
        asyncio.run(_fund(url, members, CLIENTS))
        funding_tps = members_n / (time.perf_counter() - t0)
        log(f"pgbench tpcb-like, {CLIENTS} clients, {duration} s")
        baseline = _pgbench(database_url_for(options.admin_database_url, name), CLIENTS, duration, CLIENTS)
        log(f"  {baseline['tps']} tps")
        runs: dict[str, Any] = {"pgbench_tpcb": baseline}
        for workload, work in _workloads(members).items():
            log(f"{workload}, {CLIENTS} clients, {duration} s")
            runs[workload] = asyncio.run(_drive(url, CLIENTS, duration, warmup, work))
            log(
                f"  {runs[workload]['tps']} tps, p99 {runs[workload]['p99_ms']} ms, errors {runs[workload]['errors']}"
            )
        discrepancies = asyncio.run(_reconcile(url))
    finally:
        if not options.keep_db:
            drop_database(options.admin_database_url, name)
    base = baseline["tps"] or 0.0

    def ratio(w: str) -> float | None:
        return round(runs[w]["tps"] / base, 3) if base else None

    doc = {
        "date": now_iso(),
        "machine": machine_info(version),
        "runs": runs,
        "ratios": {
            "postings_vs_pgbench_tps": ratio("pairs"),
            "hot_sharded_vs_pgbench_tps": ratio("hot_sharded"),
            "hot_single_vs_pgbench_tps": ratio("hot_single"),
        },
        "targets": {
            "postings_vs_pgbench_tps": {
                "min": 0.5,
                "value": ratio("pairs"),
                "met": (ratio("pairs") or 0) >= 0.5,
            }
        },
        "setup": {
            "members": members_n,
            "clients": CLIENTS,
            "funding_tps": round(funding_tps, 1),
            "reconcile_discrepancies_after": discrepancies,
            # Other work on the machine moves every figure: the 1-minute load average before and after.
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
    }
    if options.write and not options.quick:
        write_json(NAME, doc)
        write_results_md(NAME, _markdown(doc))
    return doc


def _markdown(doc: dict[str, Any]) -> str:
    r = doc["runs"]
    rows = "\n".join(
        f"| {w} | {fmt(r[w]['tps'])} | {fmt(r[w].get('p50_ms'), 2)} | {fmt(r[w].get('p99_ms'), 2)} | "
        f"{'–' if w == 'pgbench_tpcb' else fmt(r[w]['tps'] / r['pgbench_tpcb']['tps'] if r['pgbench_tpcb']['tps'] else None, 2)} |"
        for w in ("pgbench_tpcb", "pairs", "hot_sharded", "hot_single")
    )
    return f"""## Ledger postings ({doc["date"]})

{machine_line(doc["machine"])}. {doc["setup"]["clients"]} clients, {doc["setup"]["members"]} members;
reconcile after the run: {doc["setup"]["reconcile_discrepancies_after"]} difference(s).

| workload | tps | p50 ms | p99 ms | vs pgbench |
| --- | ---: | ---: | ---: | ---: |
{rows}

`pairs` is the target (>= 0.5 of pgbench's TPC-B-like tps). `hot_single` shows one platform row taking
every entry; `hot_sharded` is the same load spread over the account's shards.
"""
