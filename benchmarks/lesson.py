"""The runs behind docs/lesson.md, and what they show, into benchmarks/results/lesson.json.

    python benchmarks/lesson.py          # about 5 minutes on 2 cores; --out FILE

Runs the commands docs/lesson.md prints, exactly, in a temporary folder one after another (the
adding problem: a tanh RNN, an LSTM and a GRU at T = 50 and 100, three seeds each; a tanh RNN whose
W_hh starts at 1.5 times an orthogonal matrix, trained by plain SGD with and without clipping),
then records:
    report     the Markdown table `gpurnn report` prints for all of them
    explode    from the two SGD runs' metrics.jsonl and checkpoints: the gradient norm and the
               mean loss of each logged window, the step where training stopped on a NaN, the
               step kept, and the largest singular value of W_hh as each run ended
    untrained_gated   `gpurnn grads --cell lstm,gru --scales 1`: the gated cells' gradient norms
               through time with random weights
and, as the docs print it, `gpurnn grads` of the T = 100 runs into docs/grad_norms.json and .png;
with the date, the commit, the processor and the BLAS. docs/build.py writes the lesson's table and
figures from that file. The runs depend on the BLAS's rounding (see docs/lesson.md).
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_tests import cpu_model      # benchmarks/ is on the path when this script runs

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "lesson.json"
COMMON = ["--eval-every", "500", "--no-progress"]
RUNS = [(["--cell", cell, "--seq-len", str(T), "--seed", str(seed)], f"runs/lesson/{cell}-T{T}-seed{seed}")
        for T in (50, 100) for cell in ("rnn", "lstm", "gru") for seed in (0, 1, 2)]
EXPLODE = {clip: (["--cell", "rnn", "--seq-len", "20", "--init-scale", "1.5", "--optimizer", "sgd", "--lr", "0.1",
                   "--clip", "0" if clip == "off" else "1"], f"runs/explode/clip-{clip}") for clip in ("off", "1")}


def gpurnn(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gpurnn", *args], cwd=cwd, capture_output=True, text=True)


def check(done, what):
    if done.returncode != 0:
        sys.exit(f"lesson: {what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done


def sigma_max(run):
    """The largest singular value of the first layer's W_hh in ``run``'s checkpoint, and its step."""
    import gpurnn as g
    m = g.load_model(run)
    return float(np.linalg.norm(m.model.rnn.state_dict()["weight_hh_l0"], 2)), m.step


def explode_facts(run, clip):
    from gpurnn.runs import read_metrics
    lines = read_metrics(run / "metrics.jsonl")
    sigma, kept = sigma_max(run)
    stopped = next((line["step"] for line in lines if "stopped" in line), None)
    return dict(clip=clip, windows=[dict(step=w["step"], loss=w["loss"], grad_norm=w["grad_norm"],
                                         grad_norm_max=w["grad_norm_max"]) for w in lines if "loss" in w],
                stopped_at=stopped, kept_step=kept, sigma_max=sigma)


def blas():
    try:
        import threadpoolctl
        pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        return ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')})" for p in pools)
    except ImportError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="where to write (default benchmarks/results/lesson.json)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs",
                    help="where gpurnn grads writes grad_norms.json and .png (default docs/)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for flags, folder in RUNS + list(EXPLODE.values()):
            print(f"lesson: gpurnn train {' '.join(flags)} --out {folder}", flush=True)
            done = gpurnn("train", *flags, *COMMON, "--out", folder, cwd=work)
            # The unclipped run is meant to diverge: training stops on a NaN loss with exit status 1.
            diverged = done.returncode == 1 and "is saved in" in done.stderr and folder == EXPLODE["off"][1]
            if done.returncode != 0 and not diverged:
                sys.exit(f"lesson: the run {folder} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        report = check(gpurnn("report", *(folder for _, folder in RUNS + list(EXPLODE.values())), cwd=work),
                       "gpurnn report")
        explode = [explode_facts(work / folder, clip) for clip, (_, folder) in EXPLODE.items()]
        # The gradient norms through time, as docs/lesson.md prints the command: into docs/.
        trained = [a for cell in ("rnn", "lstm", "gru") for a in ("--run", f"runs/lesson/{cell}-T100-seed0")]
        check(gpurnn("grads", "--cell", "rnn", "--scales", "0.5,1,1.5,2", "--seq-len", "100", "--out", str(args.docs),
                     *trained, cwd=work), "gpurnn grads")
        # And the gated cells with random weights, the docs' `gpurnn grads --cell lstm,gru --scales 1`.
        check(gpurnn("grads", "--cell", "lstm,gru", "--scales", "1", "--out", "untrained", cwd=work), "gpurnn grads")
        untrained = json.loads((work / "untrained" / "grad_norms.json").read_text())["results"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = dict(started_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  commit=commit.stdout.strip() or "?", cpu=cpu_model(), blas=blas(),
                  commands="docs/lesson.md", report=report.stdout, explode=explode,
                  untrained_gated=[dict(label=r["label"], sigma_max=r["sigma_max"], dh_norms=r["dh_norms"])
                                   for r in untrained])
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"lesson: wrote {args.out}")


if __name__ == "__main__":
    main()
