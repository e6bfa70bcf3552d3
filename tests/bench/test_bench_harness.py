"""The benchmark harness's fast pieces: parsing wrk, writing results, the fixed-rate runner's
arithmetic. No timed run: benchmarks never fail CI for being slow."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import identity
from bench.__main__ import BENCHMARKS
from bench.common import (
    LUA_SCRIPT,
    CpuSample,
    LoadResult,
    Workload,
    cpu_per_unit,
    parse_wrk_output,
    percentile,
    replace_section,
    run_constant_rate,
    summarize_collapsed,
    summarize_components,
    write_items,
    write_json,
    write_results_md,
)

WRK_OUTPUT = """Running 15s test @ http://127.0.0.1:40123/v1/me
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    45.12ms   10.01ms 201.50ms   90.00%
    Req/Sec   710.50     80.12     0.90k    70.00%
  Latency Distribution
     50%   43.10ms
     75%   48.00ms
     90%   55.20ms
     99%  120.30ms
  21234 requests in 15.02s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   1413.72
Transfer/sec:      0.82MB
"""

BENCH_JSON_LINE = (
    'BENCH_JSON {"requests":21234,"duration_us":15020000,"connect_errors":0,"read_errors":2,'
    '"write_errors":0,"status_errors":7,"timeouts":3,"p50_us":43100,"p95_us":70250,"p99_us":120300,'
    '"max_us":201500,"threads_exhausted":1}\n'
)


class TestParseWrkOutput:
    def test_plain_summary_gives_rps_errors_and_the_printed_percentiles(self) -> None:
        result = parse_wrk_output(WRK_OUTPUT)
        assert result.requests == 21234
        assert result.duration_s == pytest.approx(15.02)
        assert result.rps == pytest.approx(1413.72)
        assert result.errors == 5
        assert result.bad_status == 7
        assert result.p50_ms == pytest.approx(43.10)
        assert result.p99_ms == pytest.approx(120.30)
        assert result.p95_ms is None  # wrk prints no p95; the Lua line carries it

    def test_the_lua_json_line_adds_p95_and_exhaustion(self) -> None:
        result = parse_wrk_output(WRK_OUTPUT + BENCH_JSON_LINE)
        assert result.p95_ms == pytest.approx(70.25)
        assert result.max_ms == pytest.approx(201.5)
        assert result.exhausted is True
        assert (result.errors, result.bad_status) == (5, 7)

    def test_units_in_microseconds_and_seconds(self) -> None:
        text = WRK_OUTPUT.replace("43.10ms", "850.00us").replace("120.30ms", "1.20s")
        result = parse_wrk_output(text)
        assert result.p50_ms == pytest.approx(0.85)
        assert result.p99_ms == pytest.approx(1200.0)

    def test_not_wrk_output_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not wrk output"):
            parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused")


class TestResultsFiles:
    def test_json_has_the_shape_scripts_compare(self, tmp_path: Path) -> None:
        doc = {
            "date": "2026-01-01T00:00:00Z",
            "machine": {"cpu_model": "x", "cores": 2},
            "runs": {"me": {"rps": 1.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}},
            "ratios": {"me_vs_baseline_rps": 0.5},
        }
        path = write_json("identity", doc, results_dir=tmp_path / "results")
        assert json.loads(path.read_text()) == doc

    def test_a_section_is_replaced_in_place_and_others_are_kept(self, tmp_path: Path) -> None:
        md = tmp_path / "RESULTS.md"
        write_results_md("identity", "## identity\nold figures", path=md)
        write_results_md("ledger", "## ledger\nledger figures", path=md)
        write_results_md("identity", "## identity\nnew figures", path=md)
        text = md.read_text()
        assert text.startswith("# Benchmark results")
        assert "new figures" in text
        assert "old figures" not in text
        assert "ledger figures" in text
        assert text.index("new figures") < text.index("ledger figures")  # stayed where it was

    def test_replace_section_appends_when_absent(self) -> None:
        out = replace_section("# Benchmark results\n\nintro\n", "referrals", "## referrals\nx")
        assert out.endswith("<!-- bench:referrals:start -->\n## referrals\nx\n<!-- bench:referrals:end -->\n")


class TestHelpers:
    def test_percentile_is_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 50) == 50.0
        assert percentile(values, 99) == 99.0
        assert percentile(values, 100) == 100.0
        assert percentile([], 99) is None

    def test_referral_codes_are_unique_crockford(self) -> None:
        codes = {identity.referral_code(n) for n in range(5000)}
        assert len(codes) == 5000
        assert all(len(c) == 8 and set(c) <= set(identity.CROCKFORD) for c in codes)

    def test_refresh_slices_never_share_a_token(self) -> None:
        plan = identity.Plan(members=100_000, warmup_s=5, saturation_s=15, fixed_s=20, fixed_warmup_s=2)
        tokens = [f"t{i}" for i in range(plan.members)]
        slices = identity.refresh_slices(tokens, plan)
        assert sum(len(s) for s in slices.values()) == len(tokens)
        assert len(set().union(*map(set, slices.values()))) == len(tokens)
        assert len(slices["fixed"]) >= identity.FIXED_RATE * (plan.fixed_s + plan.fixed_warmup_s)

    def test_saturation_rounds_combine_into_one_figure(self) -> None:
        rounds = [
            (
                LoadResult("wrk", requests=1000, duration_s=5.0, rps=200.0, p99_ms=30.0, errors=1),
                {"cores": 1.0},
            ),
            (LoadResult("wrk", requests=2000, duration_s=5.0, rps=400.0, p99_ms=10.0), {"cores": 0.5}),
            (LoadResult("wrk", requests=1500, duration_s=5.0, rps=300.0, p99_ms=20.0), {"cores": 0.75}),
        ]
        combined = identity.combine_rounds(rounds)
        assert combined.rps == 300.0  # all requests over all the time, not a mean of rates
        assert combined.p99_ms == 20.0  # the median round
        assert combined.errors == 1
        assert combined.server_cpu_cores == 0.75
        assert combined.extra["server_cpu_us_per_request"] == 2500
        assert combined.extra["rounds_rps"] == [200.0, 400.0, 300.0]

    def test_collapsed_stacks_summary(self) -> None:
        text = "main (app.py:1);handler (routes.py:9);query (db.py:3) 6\nmain (app.py:1);handler (routes.py:9) 4\n"
        total, rows = summarize_collapsed(text)
        assert total == 10
        by_name = {name: (inc, own) for name, inc, own in rows}
        assert by_name["handler (routes.py)"] == (100.0, 40.0)
        assert by_name["query (db.py)"] == (60.0, 60.0)

    def test_profile_frames_are_named_by_package_and_charged_to_components(self) -> None:
        text = (
            "<module> (/work/main/src/referloop/cli.py:1);execute (/v/lib/python3.11/site-packages/asyncpg/"
            "connection.py:377) 3\n"
            "<module> (/work/main/src/referloop/cli.py:1);verify (/work/main/src/referloop/core/security/"
            "tokens.py:9);decode (/v/lib/python3.11/site-packages/jwt/api_jws.py:341) 1\n"
        )
        total, rows = summarize_collapsed(text)
        assert total == 4
        assert ("execute (asyncpg/connection.py)", 75.0, 75.0) in rows
        assert ("verify (referloop/core/security/tokens.py)", 25.0, 0.0) in rows
        shares = summarize_components(text)
        assert shares == {"asyncpg (incl. socket writes to PostgreSQL)": 75.0, "PyJWT + cryptography": 25.0}

    def test_identity_is_registered(self) -> None:
        assert BENCHMARKS["identity"] is identity.run


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []
    keys: list[str | None] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        _Handler.seen.append(
            f"{self.command} {self.path} {self.headers.get('authorization')} {body.decode()}"
        )
        _Handler.keys.append(self.headers.get("idempotency-key"))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    _Handler.seen, _Handler.keys = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class TestRunners:
    def test_constant_rate_sends_each_single_use_item_once(self, local_server: str, tmp_path: Path) -> None:
        items = write_items(tmp_path / "tokens.txt", [f"rt_{i}" for i in range(60)])
        workload = Workload(
            "refresh", f"{local_server}/v1/auth/refresh", "json:refresh_token", items, once=True
        )
        result = run_constant_rate(workload, rate=200, duration_s=0.2, warmup_s=0.1, connections=4)
        assert result.errors == 0
        assert result.requests == 40  # 0.2 s measured at 200 rps
        assert result.p50_ms is not None
        assert result.p99_ms is not None
        sent = [json.loads(line.split(" ", 3)[3])["refresh_token"] for line in _Handler.seen]
        assert sorted(sent) == sorted(f"rt_{i}" for i in range(60))

    def test_constant_rate_refuses_to_reuse_single_use_items(self, local_server: str, tmp_path: Path) -> None:
        items = write_items(tmp_path / "tokens.txt", ["rt_a", "rt_b"])
        workload = Workload("refresh", f"{local_server}/", "json:refresh_token", items, once=True)
        with pytest.raises(ValueError, match="single-use items"):
            run_constant_rate(workload, rate=100, duration_s=1, warmup_s=0)
        assert _Handler.seen == []

    @pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
    def test_lua_script_stops_a_thread_that_runs_out_of_single_use_items(
        self, local_server: str, tmp_path: Path
    ) -> None:
        items = write_items(tmp_path / "tokens.txt", [f"rt_{i}" for i in range(10)])
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c1",
                "-d1s",
                "-s",
                str(LUA_SCRIPT),
                f"{local_server}/v1/auth/refresh",
                "--",
                str(items),
                "json:refresh_token",
                "1",
                "1",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        result = parse_wrk_output(done.stdout)
        assert result.exhausted is True
        refreshes = [line for line in _Handler.seen if line.startswith("POST /v1/auth/refresh")]
        sent = [json.loads(line.split(" ", 3)[3])["refresh_token"] for line in refreshes]
        assert len(sent) == len(set(sent))  # never a token twice
        # wrk calls request() once before the run to check for pipelining: that item is never sent
        assert set(sent) == {f"rt_{i}" for i in range(1, 10)}

    @pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
    def test_lua_bearer_post_sends_each_token_key_and_body_once(
        self, local_server: str, tmp_path: Path
    ) -> None:
        lines = [f'tok_{i} key_{i} {{"amount":{i},"currency":"INR"}}' for i in range(10)]
        items = write_items(tmp_path / "withdrawals.txt", lines)
        done = subprocess.run(
            [
                *("wrk", "-t1", "-c1", "-d1s", "-s", str(LUA_SCRIPT), f"{local_server}/v1/withdrawals"),
                *("--", str(items), "bearer-post", "1", "1"),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert parse_wrk_output(done.stdout).exhausted is True
        posts = [
            (line, key)
            for line, key in zip(_Handler.seen, _Handler.keys, strict=True)
            if line.startswith("POST")
        ]
        # The first item goes to wrk's pipelining check; every other one is sent once, as written.
        assert [line for line, _ in posts] == [
            f'POST /v1/withdrawals Bearer tok_{i} {{"amount":{i},"currency":"INR"}}' for i in range(1, 10)
        ]
        assert [key for _, key in posts] == [f"key_{i}" for i in range(1, 10)]


def test_bearer_post_items_become_the_same_request_in_the_python_runner(tmp_path: Path) -> None:
    workload = Workload("w", "http://h/v1/withdrawals", "bearer-post", tmp_path / "unused.txt")
    method, url, headers, body = workload.request_parts('tok key-1 {"amount": 1}')
    assert (method, url, body) == ("POST", "http://h/v1/withdrawals", b'{"amount": 1}')
    assert headers["Authorization"] == "Bearer tok" and headers["Idempotency-Key"] == "key-1"


def test_cpu_per_unit_splits_postgres_from_the_rest() -> None:
    figures = cpu_per_unit(CpuSample(machine=10.0, postgres=4.0), CpuSample(machine=12.0, postgres=5.0), 1000)
    assert figures == {"machine_ms": 2.0, "postgres_ms": 1.0, "rest_ms": 1.0}
    # Where /proc shows no PostgreSQL (a database on another host) the split is unknown, not zero.
    unknown = cpu_per_unit(
        CpuSample(machine=10.0, postgres=None), CpuSample(machine=12.0, postgres=None), 1000
    )
    assert unknown == {"machine_ms": 2.0, "postgres_ms": None, "rest_ms": None}
    assert cpu_per_unit(CpuSample(1.0, 1.0), CpuSample(2.0, 2.0), 0)["machine_ms"] is None
