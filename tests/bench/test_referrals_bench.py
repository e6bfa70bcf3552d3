"""bench/referrals.py's fast pieces: targets, the results document and its RESULTS.md section, the
browser workload. No timed run."""

from __future__ import annotations

from pathlib import Path

from bench import referrals
from bench.__main__ import BENCHMARKS
from bench.common import LoadResult


def _measured(bare_rps: float, redirect_rps: float, p99: float) -> dict[str, referrals.Measured]:
    def run(rps: float, p99_ms: float) -> referrals.Measured:
        sat = LoadResult(tool="wrk", requests=int(rps * 15), duration_s=15, rps=rps, p99_ms=p99_ms)
        fixed = LoadResult(
            tool="python-constant-rate",
            requests=40_000,
            duration_s=20,
            rps=2000,
            p50_ms=1.0,
            p95_ms=2.0,
            p99_ms=p99_ms,
            extra={"statuses": {"302": 40_000}},
        )
        return referrals.Measured(sat, fixed)

    return {"bare": run(bare_rps, 2.0), "redirect": run(redirect_rps, p99)}


CLICKS = {
    "buffered": 100,
    "flushed_read": 100,
    "stored": 100,
    "stored_bots": 0,
    "rolled_up": 100,
    "left_in_stream": 0,
    "flush_seconds": 0.1,
    "flush_clicks_per_second": 1000,
    "rollup_seconds": 0.01,
    "all_counted": True,
}
MACHINE = {
    "cpu_model": "x",
    "cores": 2,
    "ram_gib": 1.0,
    "kernel": "6",
    "os": "Debian",
    "python": "3.11",
    "postgresql": "15",
}


def test_registered():
    assert BENCHMARKS[referrals.NAME] is referrals.run


def test_targets_and_section():
    plan = referrals.Plan(1000, 2, 500, 100, 1, 1, 1, 1, 1000)
    outcomes = {"items": 1000, "batches": 1, "batch_p95_s": 2.5, "all_pending_after_s": 3.0, "applied": 1000}
    doc = referrals.results_document(_measured(4000, 3000, 8.0), CLICKS, outcomes, MACHINE, plan, "wrk")
    assert doc["ratios"] == {"redirect_vs_bare_rps": 0.75}
    targets = doc["targets"]
    assert targets["redirect_vs_bare_rps"]["met"] and targets["redirect_p99_ms_at_2000_rps"]["met"]
    assert targets["every_click_counted"]["met"]
    assert not targets["outcome_batch_p95_s"]["met"]  # 2.5 s >= 2 s
    assert targets["rewards_pending_after_last_batch_s"]["met"]
    section = referrals.markdown_section(doc)
    assert section.startswith("## referrals")
    assert "**75 %**" in section and "every click counted once" in section

    slow = referrals.results_document(
        _measured(4000, 2000, 12.0), {**CLICKS, "all_counted": False}, None, MACHINE, plan, None
    )
    assert not slow["targets"]["redirect_vs_bare_rps"]["met"]
    assert not slow["targets"]["redirect_p99_ms_at_2000_rps"]["met"]
    assert "**mismatch**" in referrals.markdown_section(slow)


def test_browser_workload_sends_a_browser_user_agent(tmp_path: Path):
    items = tmp_path / "slugs.txt"
    items.write_text("ABCDEFGH-123456\n")
    workload = referrals.BrowserWorkload("redirect", "http://127.0.0.1:1/r/", "path", items)
    method, url, headers, body = workload.request_parts("ABCDEFGH-123456")
    assert (method, url, body) == ("GET", "http://127.0.0.1:1/r/ABCDEFGH-123456", None)
    assert "Chrome" in headers["User-Agent"]


def test_bench_redis_database_is_its_own():
    assert referrals.redis_url_for_bench("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/13"


def test_two_worker_fixed_rate_has_its_own_target():
    plan = referrals.Plan(1000, 2, 500, 100, 1, 1, 1, 1, 1000)
    measured = _measured(4000, 3000, 30.0)
    two = {name: m.fixed for name, m in _measured(4000, 3000, 6.0).items()}
    doc = referrals.results_document(measured, CLICKS, None, MACHINE, plan, "wrk", two)
    assert not doc["targets"]["redirect_p99_ms_at_2000_rps"]["met"]
    assert doc["targets"]["redirect_p99_ms_at_2000_rps_2_api_workers"]["met"]
    assert doc["runs"]["redirect"]["fixed_rate_2_workers"]["p99_ms"] == 6.0
    assert "**6.00 ms** with two" in referrals.markdown_section(doc)
