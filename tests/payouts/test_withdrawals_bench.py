"""Fast checks of the ledger benchmark's own pieces (bench/ledger.py), never a timed run: the
withdrawal request it sends, and the results it writes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from bench import ledger as bench_ledger

MACHINE = {
    "cpu_model": "cpu",
    "cores": 2,
    "ram_gib": 4.0,
    "kernel": "6",
    "os": "Debian",
    "python": "3.11",
    "postgresql": "15",
}


def test_each_withdrawal_request_carries_a_fresh_key_the_token_and_the_method(tmp_path: Path) -> None:
    methods = [
        uuid.UUID("0193a3c4-8f1e-7cc2-9a4b-3e5f6a7b8c9d"),
        uuid.UUID("0193a3c4-8f1e-7cc2-9a4b-3e5f6a7b8c9e"),
    ]
    workload = bench_ledger.withdrawal_workload(
        "http://127.0.0.1:1/v1/withdrawals", "measured", tmp_path, ["tok1", "tok2"], methods, seconds=0.003
    )
    assert workload.once  # a key is never sent twice, not even by a later phase reading the same file
    requests = [workload.request_parts(item) for item in workload.items()]
    assert len(requests) == 5  # 3 ms at WITHDRAWAL_ITEMS_PER_S, plus one per member

    keys = [headers["Idempotency-Key"] for _, _, headers, _ in requests]
    assert len(set(keys)) == len(keys)
    for i, (method, url, headers, body) in enumerate(requests):
        assert (method, url) == ("POST", "http://127.0.0.1:1/v1/withdrawals")
        assert headers["Authorization"] == f"Bearer tok{i % 2 + 1}"  # members in turn
        assert body is not None
        assert json.loads(body) == {
            "amount": bench_ledger.WITHDRAWAL_AMOUNT,
            "currency": "INR",
            "payout_method_id": str(methods[i % 2]),
        }


def test_results_carry_both_ratios_and_the_hot_account_beside_them() -> None:
    runs = {
        "pgbench_tpcb": {"tps": 1000.0},
        "postings": {"tps": 600.0, "p50_ms": 20.0, "p99_ms": 40.0},
        "withdrawals": {"tps": 250.0, "p50_ms": 50.0, "p99_ms": 90.0},
        "hot_sharded": {"tps": 550.0, "p50_ms": 22.0, "p99_ms": 45.0},
        "hot_single": {"tps": 200.0, "p50_ms": 70.0, "p99_ms": 300.0},
    }
    plan = bench_ledger.Plan(members=10, duration_s=1, warmup_s=1)

    doc = bench_ledger.results_document(runs, MACHINE, plan, 100.0, 0, 1.0)

    assert doc["ratios"]["postings_vs_pgbench_tps"] == 0.6
    assert doc["ratios"]["withdrawals_vs_pgbench_tps"] == 0.25
    assert doc["ratios"]["hot_single_vs_pgbench_tps"] == 0.2
    assert doc["targets"]["postings_vs_pgbench_tps"]["met"] is True
    assert doc["targets"]["withdrawals_vs_pgbench_tps"]["met"] is False
    section = bench_ledger.markdown_section(doc)
    assert "| POST /v1/withdrawals (HTTP) | 250.0 | 50.00 | 90.00 | 0.25 |" in section
    assert "hot account: all into `adjustments` (one row)" in section
    assert "withdrawals\n>= 30% (MISSED)" in section


def test_ceilings_are_the_cores_over_postgres_cpu_with_and_without_the_http_floor() -> None:
    runs = {
        "pgbench_tpcb": {"tps": 2000.0, "cpu_ms_per_txn": {"machine_ms": 1.0, "postgres_ms": 0.8}},
        "postings": {"tps": 700.0, "cpu_ms_per_txn": {"machine_ms": 2.8, "postgres_ms": 1.0}},
        "withdrawals": {"tps": 100.0, "cpu_ms_per_txn": {"machine_ms": 20.0, "postgres_ms": 2.5}},
        "hot_sharded": {"tps": 600.0},
        "hot_single": {"tps": 300.0},
        "http_floor": {"rps": 3000.0, "server_cpu_ms_per_request": 0.5},
    }
    doc = bench_ledger.results_document(runs, MACHINE, bench_ledger.Plan(10, 1, 1), 100.0, 0, 1.0)
    # 2 cores / 1.0 ms = 2,000 entries/s = 1.0 of pgbench; 2 / 2.5 ms = 800/s = 0.4; 2 / 3.0 ms = 667/s
    assert doc["ceilings_if_only_postgres_cost"] == {
        "postings_vs_pgbench_tps": 1.0,
        "withdrawals_vs_pgbench_tps": 0.4,
        "withdrawals_with_a_bare_302_vs_pgbench_tps": 0.333,
    }
    section = bench_ledger.markdown_section(doc)
    assert "a bare 302: 0.500 ms" in section and "at most 0.33" in section
    # Without the split (a database on another host) there is no ceiling, rather than a wrong one.
    runs["withdrawals"]["cpu_ms_per_txn"]["postgres_ms"] = None
    doc = bench_ledger.results_document(runs, MACHINE, bench_ledger.Plan(10, 1, 1), 100.0, 0, 1.0)
    assert doc["ceilings_if_only_postgres_cost"]["withdrawals_vs_pgbench_tps"] is None
