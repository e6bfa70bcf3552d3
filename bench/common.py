"""Shared pieces of every benchmark: a fresh database, the server process, load runs, machine
facts and the results files. A benchmark module builds its data and its workloads, then calls these.

Load tools:
- saturation ("requests per second at N connections"): wrk (Debian package) with bench/lua/items.lua;
  where wrk cannot be had, a closed-loop aiohttp runner with the same connection count.
- fixed rate ("p50/p95/p99 at 1,000 rps"): `run_constant_rate`, an open-loop aiohttp generator.
  Each request has an intended send time (start + i / rate) and its latency is measured from that
  time, not from when a connection became free, so a stalled server is charged for every request
  it delayed (no coordinated omission, as in wrk2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "lua" / "items.lua"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULTS_DIR = BENCH_DIR / "results"
# Scratch output kept out of git (profiles: large, and new on every run).
WORK_DIR = BENCH_DIR / ".work"

DEFAULT_ADMIN_DATABASE_URL = "postgresql://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Options every benchmark receives


@dataclass(frozen=True)
class BenchOptions:
    admin_database_url: str = DEFAULT_ADMIN_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    quick: bool = False  # small data and short runs: a smoke check of the harness, results not written
    keep_db: bool = False
    profile: bool = False  # py-spy the server even when targets are met
    write: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> BenchOptions:
        values: dict[str, Any] = {
            "admin_database_url": os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_DATABASE_URL),
            "redis_url": os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        }
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# Database


def database_url_for(admin_url: str, name: str) -> str:
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


async def _admin_execute(admin_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create `name`, run every migration, return its URL."""
    from referloop.cli import run_migrations

    asyncio.run(
        _admin_execute(
            admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
        )
    )
    url = database_url_for(admin_url, name)
    run_migrations(url)
    return url


def drop_database(admin_url: str, name: str) -> None:
    asyncio.run(_admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _sessions_started(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        # PostgreSQL >= 14 counts sessions per database; flushed when each backend exits.
        value = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value or 0)
    finally:
        await conn.close()


def sessions_started(url: str) -> int | None:
    """How many connections the database has had so far (None before PostgreSQL 14)."""
    try:
        return asyncio.run(_sessions_started(url))
    except Exception:
        return None


async def postgres_version(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------------
# The server under test


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def referloop_command() -> list[str]:
    script = Path(sys.executable).with_name("referloop")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from referloop.cli import main; main()"]


class Server:
    """`referloop serve` as a child process, with the given REFERLOOP_* settings.

    It runs in `workdir` so that no developer's `.env` leaks into the measured configuration."""

    def __init__(self, settings_env: dict[str, str], workdir: Path, *, workers: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.workers = workers
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REFERLOOP_")}
        self.env.update(settings_env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        import httpx

        cmd = [*referloop_command(), "serve", "--workers", str(self.workers), "--port", str(self.port)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far: its process and, with several
        workers, the worker processes it started."""
        return process_cpu_seconds(self.pid) + sum(process_cpu_seconds(pid) for pid in child_pids(self.pid))

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile
        return 0.0
    # fields[11], fields[12] are utime and stime (the 14th and 15th fields of the whole line)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:  # the 4th field of the whole line: the parent's pid
                children.append(int(entry.name))
    return children


# --------------------------------------------------------------------------------------------------
# Where the CPU went: the machine's busy time and PostgreSQL's share of it


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one instant. `machine` is every core's busy time (user, nice,
    system, irq, softirq: not idle, iowait or steal); `postgres` is what the local PostgreSQL's
    processes used, exited backends included (the postmaster reaps them into its children's time).
    Either is None where /proc does not show it (another OS, a database on another host)."""

    machine: float | None
    postgres: float | None


def _machine_busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _postgres_seconds() -> float | None:
    total, seen = 0, False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            line = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        name, rest = line[line.index("(") + 1 : line.rindex(")")], line.rsplit(")", 1)[1].split()
        if name.startswith("postgres"):
            seen = True
            # utime, stime, cutime, cstime: the 14th to 17th fields of the whole line
            total += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def cpu_sample() -> CpuSample:
    return CpuSample(machine=_machine_busy_seconds(), postgres=_postgres_seconds())


def cpu_per_unit(before: CpuSample, after: CpuSample, units: int) -> dict[str, float | None]:
    """Milliseconds of CPU per unit of work between two samples: the whole machine's, PostgreSQL's,
    and the rest (the client or API server, the load generator, the kernel's share of both)."""

    def per(a: float | None, b: float | None) -> float | None:
        return round((b - a) * 1000 / units, 3) if a is not None and b is not None and units else None

    machine = per(before.machine, after.machine)
    postgres = per(before.postgres, after.postgres)
    rest = round(machine - postgres, 3) if machine is not None and postgres is not None else None
    return {"machine_ms": machine, "postgres_ms": postgres, "rest_ms": rest}


# --------------------------------------------------------------------------------------------------
# Workloads and load results


@dataclass(frozen=True)
class Workload:
    """One kind of request, made from a list of items (tokens, ids), one item per request.

    kind: "bearer" (GET url, item as bearer token), "path" (GET url + item), "json:<field>"
    (POST url with {"<field>": item}) or "bearer-post" (item `<token> <idempotency key> <JSON
    body>`: POST url with that body, token and key). once: an item is never sent twice (single-use
    tokens, idempotency keys)."""

    name: str
    url: str
    kind: str
    items_file: Path
    once: bool = False

    def request_parts(self, item: str) -> tuple[str, str, dict[str, str], bytes | None]:
        if self.kind == "bearer":
            return "GET", self.url, {"Authorization": f"Bearer {item}"}, None
        if self.kind == "path":
            return "GET", self.url + item, {}, None
        if self.kind == "bearer-post":
            token, key, body_text = item.split(" ", 2)
            headers = {
                "Authorization": f"Bearer {token}",
                "Idempotency-Key": key,
                "Content-Type": "application/json",
            }
            return "POST", self.url, headers, body_text.encode()
        if self.kind.startswith("json:"):
            body = json.dumps({self.kind[5:]: item}).encode()
            return "POST", self.url, {"Content-Type": "application/json"}, body
        raise ValueError(f"unknown workload kind {self.kind!r}")

    def items(self) -> list[str]:
        return [line for line in self.items_file.read_text().splitlines() if line]


def write_items(path: Path, items: Sequence[str]) -> Path:
    path.write_text("\n".join(items) + "\n")
    return path


@dataclass
class LoadResult:
    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0  # socket errors and timeouts
    bad_status: int = 0  # answers with status >= 400
    exhausted: bool = False  # a single-use item list ran out before the run ended
    target_rps: float | None = None  # fixed-rate runs: the rate asked for
    sender_lag_p99_ms: float | None = None  # fixed-rate runs: how late the generator itself sent
    server_cpu_cores: float | None = None  # CPU the server process used, in cores, during the run
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


_UNITS_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_TO_MS[unit]


def parse_wrk_output(text: str) -> LoadResult:
    """Parse wrk's summary (with or without --latency) and the BENCH_JSON line of items.lua."""
    rps_match = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total_match = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.MULTILINE)
    if rps_match is None or total_match is None:
        raise ValueError(f"not wrk output:\n{text[-2000:]}")
    result = LoadResult(
        tool="wrk",
        requests=int(total_match.group(1)),
        duration_s=_to_ms(total_match.group(2), total_match.group(3)) / 1000,
        rps=float(rps_match.group(1)),
    )
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket_errors:
        result.errors = sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        result.bad_status = int(non_2xx.group(1))
    # --latency prints a distribution: "50%  1.23ms"; p95 is not among its lines.
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
        if m:
            setattr(result, attr, _to_ms(m.group(1), m.group(2)))
    json_line = re.search(r"^BENCH_JSON (\{.*\})\s*$", text, re.MULTILINE)
    if json_line:
        data = json.loads(json_line.group(1))
        result.p50_ms = data["p50_us"] / 1000
        result.p95_ms = data["p95_us"] / 1000
        result.p99_ms = data["p99_us"] / 1000
        result.max_ms = data["max_us"] / 1000
        result.exhausted = data["threads_exhausted"] > 0
        result.errors = data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"]
        result.bad_status = data["status_errors"]
    return result


# --------------------------------------------------------------------------------------------------
# wrk


def ensure_wrk() -> str | None:
    """The wrk binary, installed from Debian when missing; None where it cannot be had."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None:
        log("wrk is not installed and there is no apt-get: using the Python runner instead")
        return None
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        log("wrk is not installed and this user cannot run apt-get: using the Python runner instead")
        return None
    log("installing wrk from Debian (apt-get update && apt-get install -y wrk)")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False)
    policy = subprocess.run(
        ["apt-cache", "policy", "wrk"], capture_output=True, text=True, check=False
    ).stdout
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        log("Debian has no wrk candidate here: using the Python runner instead")
        return None
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "wrk"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    workload: Workload,
    *,
    connections: int,
    duration_s: float,
    threads: int = 2,
    timeout_s: float = 10.0,
) -> LoadResult:
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        workload.url,
        "--",
        str(workload.items_file),
        workload.kind,
        str(threads),
        "1" if workload.once else "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration_s + 120)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return parse_wrk_output(done.stdout)


# --------------------------------------------------------------------------------------------------
# Python runners (aiohttp on uvloop)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _constant_rate(
    workload: Workload,
    items: list[str],
    rate: float,
    duration_s: float,
    warmup_s: float,
    connections: int,
    timeout_s: float,
) -> LoadResult:
    import aiohttp

    total = int(rate * (warmup_s + duration_s))
    measured_from = int(rate * warmup_s)
    if workload.once and total > len(items):
        raise ValueError(
            f"{workload.name}: {total} requests need {total} single-use items, have {len(items)}"
        )
    latencies = array("d")
    lags = array("d")
    bad_status = 0
    statuses: dict[str, int] = {}
    last_done = 0.0
    loop = asyncio.get_running_loop()
    # uvloop's loop.time() ticks in whole milliseconds: too coarse for latencies of a millisecond
    clock = time.perf_counter
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None)
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(index: int, intended: float) -> None:
            nonlocal bad_status, last_done
            method, url, headers, body = workload.request_parts(items[index % len(items)])
            try:
                async with session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                return  # counted as an error: it never completes
            if index >= measured_from:
                finished = clock()
                latencies.append(finished - intended)
                last_done = max(last_done, finished)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status >= 400:
                    bad_status += 1

        tasks: set[asyncio.Task[None]] = set()
        start = clock() + 0.05
        interval = 1.0 / rate
        for i in range(total):
            intended = start + i * interval
            delay = intended - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if i >= measured_from:
                lags.append(max(0.0, clock() - intended))
            task = loop.create_task(one(i, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5)

    ordered = sorted(latencies)
    lag_sorted = sorted(lags)
    count = total - measured_from
    lag_p99 = percentile(lag_sorted, 99)
    return LoadResult(
        tool="python-constant-rate",
        requests=count,
        duration_s=duration_s,
        # completed answers per second, from the first measured send to the last measured answer
        rps=len(ordered) / max(last_done - (start + warmup_s), 1e-9) if ordered else 0.0,
        p50_ms=_ms(percentile(ordered, 50)),
        p95_ms=_ms(percentile(ordered, 95)),
        p99_ms=_ms(percentile(ordered, 99)),
        max_ms=_ms(ordered[-1] if ordered else None),
        errors=count - len(ordered),  # failed and never-completed requests alike
        bad_status=bad_status,
        target_rps=rate,
        sender_lag_p99_ms=_ms(lag_p99),
        extra={"statuses": statuses},
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def run_constant_rate(
    workload: Workload,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 2.0,
    connections: int = 64,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Open-loop load at a fixed rate; latency from each request's intended send time."""
    result: LoadResult = _run_async(
        _constant_rate(workload, workload.items(), rate, duration_s, warmup_s, connections, timeout_s)
    )
    return result


async def _closed_loop(
    workload: Workload, items: list[str], connections: int, duration_s: float, timeout_s: float
) -> LoadResult:
    import aiohttp

    clock = time.perf_counter
    latencies = array("d")
    errors = bad_status = 0
    statuses: dict[str, int] = {}
    next_index = 0
    exhausted = False
    deadline = clock() + duration_s
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=None)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def worker() -> None:
            nonlocal errors, bad_status, next_index, exhausted
            while clock() < deadline:
                if next_index >= len(items):
                    if workload.once:
                        exhausted = True
                        return
                    next_index = 0
                method, url, headers, body = workload.request_parts(items[next_index])
                next_index += 1
                sent = clock()
                try:
                    async with session.request(
                        method, url, headers=headers, data=body, allow_redirects=False
                    ) as resp:
                        await resp.read()
                        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                        if resp.status >= 400:
                            bad_status += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(clock() - sent)

        started = clock()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = clock() - started
    ordered = sorted(latencies)
    return LoadResult(
        tool="python-closed-loop",
        requests=len(ordered) + errors,
        duration_s=elapsed,
        rps=(len(ordered) + errors) / elapsed,
        p50_ms=_ms(percentile(ordered, 50)),
        p95_ms=_ms(percentile(ordered, 95)),
        p99_ms=_ms(percentile(ordered, 99)),
        max_ms=_ms(ordered[-1] if ordered else None),
        errors=errors,
        bad_status=bad_status,
        exhausted=exhausted,
        extra={"statuses": statuses},
    )


def run_saturation(
    wrk: str | None, workload: Workload, *, connections: int, duration_s: float, threads: int = 2
) -> LoadResult:
    """Requests per second with `connections` always busy: wrk, else the Python closed loop."""
    if wrk is not None:
        return run_wrk(wrk, workload, connections=connections, duration_s=duration_s, threads=threads)
    result: LoadResult = _run_async(_closed_loop(workload, workload.items(), connections, duration_s, 10.0))
    return result


@contextlib.contextmanager
def measure_cpu(server: Server, into: dict[str, float], database_url: str | None = None) -> Iterator[None]:
    """Put the cores the server process used while the block ran into `into["cores"]`, and with a
    database URL, the connections the database saw opened meanwhile into `into["db_connections"]`
    (a pool that keeps its connections opens none; one that churns opens many)."""
    sessions0 = sessions_started(database_url) if database_url else None
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    yield
    into["cores"] = round((server.cpu_seconds() - cpu0) / max(time.monotonic() - t0, 1e-9), 2)
    if sessions0 is not None and database_url:
        time.sleep(0.6)  # backends report their session at exit; let the last ones land
        sessions1 = sessions_started(database_url)
        if sessions1 is not None:
            into["db_connections"] = max(0, sessions1 - sessions0 - 1)  # minus the first probe itself


# --------------------------------------------------------------------------------------------------
# py-spy


def profile_server(pid: int, seconds: int, out_raw: Path, rate: int = 250) -> bool:
    """Sample the server with py-spy into a collapsed-stack file; False where py-spy cannot run."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        log("py-spy is not installed: no profile")
        return False
    done = subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",  # the API's worker processes, when it runs several
            "--output",
            str(out_raw),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not out_raw.exists():
        log(f"py-spy failed: {done.stderr.strip()[-500:]}")
        return False
    return True


def summarize_collapsed(text: str, top: int = 30) -> tuple[int, list[tuple[str, float, float]]]:
    """From py-spy's collapsed stacks: total samples and, per function, (name, inclusive %, self %)."""
    inclusive: dict[str, int] = {}
    self_time: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
    rows = sorted(inclusive, key=lambda n: -inclusive[n])[:top]
    return total, [
        (name, 100 * inclusive[name] / max(total, 1), 100 * self_time.get(name, 0) / max(total, 1))
        for name in rows
    ]


def _frame_name(frame: str) -> str:
    # py-spy frames look like "function (path/to/module.py:123)": keep function and file, drop the line
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    # greedy: the last marker wins, so ".../lib/python3.11/site-packages/x" becomes "x"
    path = re.sub(r"^.*(site-packages/|/src/|/lib/python3\.\d+/)", "", path)
    return f"{func} ({path})"


# Where a sampled function's own time is charged: the first pattern its file matches.
COMPONENTS: list[tuple[str, str]] = [
    ("referloop (our code)", r"^referloop/"),
    ("SQLAlchemy", r"^sqlalchemy/"),
    ("asyncpg (incl. socket writes to PostgreSQL)", r"^asyncpg/"),
    ("redis-py", r"^redis/"),
    ("PyJWT + cryptography", r"^(jwt|cryptography)/"),
    ("pydantic", r"^pydantic"),
    ("FastAPI / Starlette", r"^(fastapi|starlette)/"),
    ("uvicorn / httptools", r"^(uvicorn|httptools)/"),
    ("threadpool hand-offs (anyio, threading)", r"^(anyio/|threading\.py|concurrent/)"),
    ("asyncio / event loop", r"^(asyncio/|uvloop/)"),
    ("stdlib helpers (contextlib, weakref, uuid, ...)", r"^(contextlib|weakref|uuid|re/|typing|functools)"),
    ("observability (prometheus, structlog, otel)", r"^(prometheus_client|structlog|opentelemetry)/"),
]


NO_PYTHON_FRAME = "no Python frame (C code: event loop, GC, other threads)"


def component_of(frame_name: str) -> str:
    m = re.search(r"\((.*)\)$", frame_name)
    path = m.group(1) if m else frame_name
    for name, pattern in COMPONENTS:
        if re.search(pattern, path):
            return name
    return "other"


def summarize_components(text: str) -> dict[str, float]:
    """Share of samples (%) whose innermost Python frame lies in each component."""
    shares: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f for f in stack.split(";") if f.strip()]
        total += int(count_text)
        component = component_of(_frame_name(frames[-1])) if frames else NO_PYTHON_FRAME
        shares[component] = shares.get(component, 0) + int(count_text)
    return {k: round(100 * v / max(total, 1), 1) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


# --------------------------------------------------------------------------------------------------
# Machine facts


def machine_info(postgresql: str | None = None) -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": cpu_model,
        "cores": usable,
        "ram_gib": ram_gib,
        "kernel": platform.release(),
        "os": os_name,
        "python": platform.python_version(),
        "postgresql": postgresql,
        # Other work on the machine when the run started: the figures are only as good as this is low.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# Results files

RESULTS_HEADER = """# Benchmark results

Written by `make bench` (`python -m bench`); each benchmark replaces its own section. The same figures
are in `bench/results/<benchmark>.json`. How they are measured: `bench/README.md`.
"""


def write_json(name: str, data: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def replace_section(document: str, name: str, section: str) -> str:
    """Put `section` between this benchmark's markers, replacing what was there, or append it."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    if not document.strip():
        document = RESULTS_HEADER
    return document.rstrip() + "\n\n" + block + "\n"


def write_results_md(name: str, section: str, path: Path = RESULTS_MD) -> Path:
    current = path.read_text() if path.exists() else ""
    path.write_text(replace_section(current, name, section))
    return path


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"Linux {machine['kernel']} ({machine['os']}), Python {machine['python']}, "
        f"PostgreSQL {machine['postgresql']}; load average at start {machine.get('load_average')}"
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
