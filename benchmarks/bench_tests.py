"""How long the test suite takes here: the README's test command, the same spread over the cores
by pytest-xdist, and the fast lane, each timed once.

    python benchmarks/bench_tests.py      # about 50 minutes on 2 cores; --out, --name, --runs full,fast

Runs, from the repository root, in child processes one after the other:
    full    python -m pytest                  (the README's test command: every test, one process)
    xdist   python -m pytest -n auto          (every test on pytest-xdist's workers, one a core;
                                               only where pytest-xdist is installed)
    fast    python -m pytest -m "not slow"    (the fast lane)
and writes results/<name>.json with each one's wall-clock seconds, pytest's closing line and the
machine (cores, processor), which docs/build.py states in the README and docs/testing.md. Exits 1
when any run fails; nothing is written then.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = {"full": [], "xdist": ["-n", "auto"], "fast": ["-m", "not slow"]}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default benchmarks/results)")
    ap.add_argument("--name", default="bench_tests", help="file name of the results, without suffix")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"which runs, comma-separated (default {','.join(RUNS)}; "
                                                            f"full and fast are needed by the docs)")
    args = ap.parse_args(argv)
    chosen = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(RUNS))
    if unknown or not {"full", "fast"} <= set(chosen):
        ap.error(f"--runs: give some of {', '.join(RUNS)}, full and fast among them; got {args.runs!r}")
    rows = []
    for name, extra in RUNS.items():
        if name not in chosen:
            continue
        if name == "xdist" and importlib.util.find_spec("xdist") is None:
            print("bench_tests: pytest-xdist is not installed: no xdist run", flush=True)
            continue
        cmd = [sys.executable, "-m", "pytest", *extra, "-q", "-p", "no:cacheprovider"]
        print(f"bench_tests: {' '.join(cmd[1:])} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        closing = (proc.stdout.strip().splitlines() or [""])[-1].strip("= ")
        print(f"bench_tests: {closing} ({seconds:.0f} s wall)", flush=True)
        if proc.returncode != 0:
            print(proc.stdout[-6000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|deselected)", closing)}
        command = " ".join(["python -m pytest"] + [f'"{a}"' if " " in a else a for a in extra])
        rows.append(dict(run=name, command=command, seconds=seconds, closing_line=closing, **counts))
    result = dict(started_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  machine=dict(cpu=cpu_model(), cores=os.cpu_count(), python=platform.python_version()),
                  rows=rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
