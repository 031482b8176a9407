"""How long gpurnn's commands take from a shell, each in a fresh process, on this machine.

    python benchmarks/bench_startup.py            # about a minute on 2 cores; --reps, --out, --name

Times the wall clock of whole commands, so what a command spends before its work (starting Python,
importing, asking whether a GPU is usable) is at most the time shown:
    import              python -c "import gpurnn; gpurnn.cuda_status()"
    --help              gpurnn --help
    report              gpurnn report RUN
    predict (auto)      gpurnn predict RUN --data 10 sequences --backend auto   (loads the model and
                        the compiled kernels from Numba's cache, then predicts)
    train (README)      the README's main job, `gpurnn train` with every default, once
A small run (20 steps) is trained first into a temporary folder for report and predict, which
also fills Numba's cache, so no timed command compiles. Medians over --reps runs of each command,
interleaved round by round. Writes results/<name>.json and .md.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def gpurnn_command():
    """The installed ``gpurnn`` script beside this Python, else ``python -m gpurnn``."""
    script = Path(sys.executable).with_name("gpurnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpurnn"]


def timed(cmd, cwd):
    """(seconds, the last line it wrote to stderr, where gpurnn says what it did) of one run of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench_startup: {' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, (proc.stderr.strip().splitlines() or [""])[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed runs of each command (default 7)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default benchmarks/results)")
    ap.add_argument("--name", default="bench_startup", help="file name of the results, without suffix")
    ap.add_argument("--no-train", action="store_true", help="leave out the README's main job")
    args = ap.parse_args(argv)
    gp = gpurnn_command()
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        timed(gp + ["train", "--steps", "20", "--no-progress", "--out", run], tmp)
        data = os.path.join(tmp, "new.npz")
        np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (10, 50, 2)).astype(np.float32))
        # name: (the command as a user types it, what runs here)
        commands = {
            "import": ('python -c "import gpurnn; gpurnn.cuda_status()"',
                       [sys.executable, "-c", "import gpurnn; gpurnn.cuda_status()"]),
            "--help": ("gpurnn --help", gp + ["--help"]),
            "report": ("gpurnn report RUN", gp + ["report", run]),
            "predict (auto)": ("gpurnn predict RUN --data new.npz --out p.npy --backend auto",
                               gp + ["predict", run, "--data", data, "--out", os.path.join(tmp, "p.npy"),
                                     "--backend", "auto"]),
        }
        samples = {name: [] for name in commands}
        for _ in range(args.reps):
            for name, (_, cmd) in commands.items():
                samples[name].append(timed(cmd, tmp)[0])
        said = {}
        if not args.no_train:
            commands["train (README)"] = ("gpurnn train", None)
            seconds, said["train (README)"] = timed(gp + ["train", "--out", os.path.join(tmp, "main")], tmp)
            samples["train (README)"] = [seconds]
    import gpurnn
    result = dict(
        started_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                     python=platform.python_version(), gpurnn_cuda_status=list(gpurnn.cuda_status())),
        load_average=os.getloadavg(), reps=args.reps,
        rows=[dict(command=name, typed=commands[name][0], median_s=statistics.median(s), min_s=min(s),
                   max_s=max(s), samples=s, last_line=said.get(name)) for name, s in samples.items()])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Wall-clock seconds of whole commands, fresh processes, {result['started_utc']}, "
             f"{result['machine']['cores']} cores, Python {result['machine']['python']}; "
             f"cuda_status: {result['machine']['gpurnn_cuda_status'][1]}.", "",
             "| command | as typed | median s | min s | max s | runs |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['command']} | `{r['typed']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} "
              f"| {len(r['samples'])} |"
              for r in result["rows"]]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
