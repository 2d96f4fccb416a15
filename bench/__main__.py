"""``python -m bench [--quick] [--cases a,b] [--runs N] [--json PATH]`` (``make bench``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .run import CASE_IDS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time rootfs against GNU tar and umoci on generated images (issue 8); exit 1 when a target is missed.",
        epilog="Cases: docker (1), gzip (2), zstd (3), flatten (4), umoci (5), small (7), startup; "
        "peak RSS (6) is checked in 1-4 and 7. Outputs go to $BENCH_DIR, else /dev/shm.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny inputs for a smoke run (a few seconds); targets not enforced")
    parser.add_argument("--cases", default="all", help=f"comma-separated subset of: {', '.join(CASE_IDS)} (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool; the best counts (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default bench/results.json; .bench/results-quick.json with --quick)")
    args = parser.parse_args(argv)
    if args.cases == "all":
        cases = list(CASE_IDS)
    else:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASE_IDS]
        if unknown or not cases:
            parser.error(f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CASE_IDS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return run(cases, args.runs, args.quick, args.json)


if __name__ == "__main__":
    sys.exit(main())
