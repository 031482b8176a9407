"""The two worked examples of "Your own data" (docs/training.md), run as printed, into
benchmarks/results/own_data.json.

    python benchmarks/own_data.py       # about a minute; needs scikit-learn and statsmodels, only
                                        # to export their data sets (pip install scikit-learn statsmodels)

In a temporary folder: the docs' one-liners export scikit-learn's handwritten digits to digits.npz
and statsmodels' yearly sunspot numbers to sunspots.csv; then the docs' `gpurnn train` and
`gpurnn predict` commands run on them. Recorded for each: the command's seconds and its closing
line (held-out metric and baseline), the sizes of the training and held-out parts, the lowest
held-out metric of the evaluations and its step; for the digits, how many labels `gpurnn predict`
wrote and the accuracy of those on the held-out rows. docs/build.py writes the docs' figures from it.
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_tests import cpu_model      # benchmarks/ is on the path when this script runs

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "own_data.json"
EXPORT = {
    "digits.npz": "from sklearn.datasets import load_digits; import numpy as np; d = load_digits(); "
                  "np.savez('digits.npz', x=d.images, y=d.target)",
    "sunspots.csv": "import statsmodels.api as sm; "
                    "sm.datasets.sunspots.load_pandas().data.to_csv('sunspots.csv', index=False)",
}
TRAIN = {
    "digits": ["--data", "digits.npz", "--out", "runs/digits"],
    "sunspots": ["--data", "sunspots.csv", "--target", "SUNACTIVITY", "--features", "SUNACTIVITY",
                 "--seq-len", "20", "--hidden", "16", "--steps", "1000", "--out", "runs/sunspots"],
}


def run(args, cwd):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"own_data: {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, (done.stderr.strip().splitlines() or [""])[-1]


def evaluations(folder):
    """[(step, held-out metric)] of a run's evaluations, from its metrics.jsonl."""
    from gpurnn.runs import read_metrics
    return [(r["step"], r["eval_metric"]) for r in read_metrics(folder / "metrics.jsonl") if "eval_metric" in r]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="where to write (default benchmarks/results/own_data.json)")
    args = ap.parse_args(argv)
    import gpurnn
    examples, tasks = {}, {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for code in EXPORT.values():
            run(["-c", code], work)
        for name, flags in TRAIN.items():
            seconds, last = run(["-m", "gpurnn", "train", *flags], work)
            # The split the run trained on: the file read as the checkpoint says it was (seed 0, a fifth held out).
            source = gpurnn.load_model(work / "runs" / name).task["source"]
            task = tasks[name] = gpurnn.task_from_file(work / flags[1], seq_len=source.get("seq_len"),
                                                       target=source.get("target"), horizon=source.get("horizon"),
                                                       features=source.get("features"))
            evals = evaluations(work / "runs" / name)
            best = (min if name == "sunspots" else max)(evals, key=lambda e: e[1])
            examples[name] = dict(command="gpurnn train " + " ".join(flags), seconds=seconds, last_line=last,
                                  train_rows=len(task.train_rows), eval_rows=len(task.eval_rows),
                                  evaluations=evals, best_step=best[0], best_metric=best[1])
        run(["-m", "gpurnn", "predict", "runs/digits", "--data", "digits.npz", "--out", "digits-pred.npy"], work)
        labels = np.load(work / "digits-pred.npy")
        y = np.load(work / "digits.npz")["y"]
        held = tasks["digits"].eval_rows
        examples["digits"].update(predicted=int(labels.shape[0]),
                                  held_out_accuracy_of_predict=float(np.mean(labels[held] == y[held])))
    result = dict(started_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  cpu=cpu_model(), examples=examples)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"own_data: wrote {args.out}")


if __name__ == "__main__":
    main()
