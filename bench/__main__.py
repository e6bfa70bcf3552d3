"""`python -m bench [NAME ...]`: run the benchmarks (all of them by default) against a real server.

A benchmark is a function `run(options: BenchOptions) -> dict` in its own module, registered in
BENCHMARKS below; it writes its section of bench/RESULTS.md and bench/results/<name>.json."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from bench import identity, ledger, referrals
from bench.common import BenchOptions, log

BENCHMARKS: dict[str, Callable[[BenchOptions], dict[str, Any]]] = {
    identity.NAME: identity.run,
    ledger.NAME: ledger.run,
    referrals.NAME: referrals.run,
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--quick", action="store_true", help="small data, short runs, results not written: checks the harness"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server even when targets are met")
    parser.add_argument("--keep-db", action="store_true", help="keep the benchmark database and temp files")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write no results files")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    # A benchmark started in the background ignores SIGINT; let SIGTERM unwind like Ctrl-C, so the
    # server is stopped and the benchmark database dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    options = BenchOptions.from_env(
        quick=args.quick, profile=args.profile, keep_db=args.keep_db, write=not args.no_write
    )
    failed = []
    for name in args.names or list(BENCHMARKS):
        log(f"=== {name} ===")
        try:
            BENCHMARKS[name](options)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
    if failed:
        log(f"benchmarks that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
