"""The worked examples of "Your own data" (README, docs/training.md), run as printed, into
benchmarks/results/own_data.json and docs/co2-curves.png.

    python benchmarks/own_data.py       # about three minutes; needs scikit-learn and statsmodels,
                                        # only to export their data sets (pip install scikit-learn statsmodels)

In a temporary folder: the docs' one-liners export scikit-learn's handwritten digits to digits.npz,
statsmodels' yearly sunspot numbers to sunspots.csv and its weekly Mauna Loa CO2 series to co2.csv;
then the docs' `gpurnn train`, `predict`, `report` and `plot` commands run on them. Recorded for
each run: the command's seconds and its closing line (held-out metric and baseline), the sizes of
the training and held-out parts, every evaluation, the best and its step; for the digits, how many
labels `gpurnn predict` wrote and the accuracy of those on the held-out rows; for CO2, five seeds
with and without --difference, the report of the ten runs and the plot of the seed whose last
state lost to the naive forecast while its best state beat it (if any). docs/build.py writes the docs' figures from it.
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
    "co2.csv": "import statsmodels.api as sm; d = sm.datasets.co2.load_pandas().data.interpolate(); "
               "d.index = d.index.strftime('%Y-%m-%d'); d.rename_axis('date').to_csv('co2.csv')",
}
CO2_SEEDS = range(5)
CO2 = ["--data", "co2.csv", "--target", "co2", "--season", "52"]
TRAIN = {
    "digits": ["--data", "digits.npz", "--out", "runs/digits"],
    "sunspots": ["--data", "sunspots.csv", "--target", "SUNACTIVITY", "--features", "SUNACTIVITY",
                 "--seq-len", "20", "--hidden", "16", "--steps", "1000", "--out", "runs/sunspots"],
    **{f"co2-s{seed}": CO2 + ["--seed", str(seed), "--out", f"runs/co2-s{seed}"] for seed in CO2_SEEDS},
    **{f"co2-diff-s{seed}": CO2 + ["--difference", "--seed", str(seed), "--out", f"runs/co2-diff-s{seed}"]
       for seed in CO2_SEEDS},
}
PLOT = ROOT / "docs" / "co2-curves.png"


def run(args, cwd, stdout=False):
    """(seconds, the last line of stderr) of ``python ARGS`` in ``cwd``, and its stdout when asked."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"own_data: {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    said = time.perf_counter() - start, (done.stderr.strip().splitlines() or [""])[-1]
    return said + (done.stdout,) if stdout else said


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
                                                       features=source.get("features"),
                                                       difference=source.get("difference", False),
                                                       season=source.get("season"))
            evals = evaluations(work / "runs" / name)
            best = (max if name == "digits" else min)(evals, key=lambda e: e[1])
            examples[name] = dict(command="gpurnn train " + " ".join(flags), seconds=seconds, last_line=last,
                                  train_rows=len(task.train_rows), eval_rows=len(task.eval_rows),
                                  evaluations=evals, best_step=best[0], best_metric=best[1],
                                  baselines=[list(b) for b in getattr(task, "baselines", [])])
        run(["-m", "gpurnn", "predict", "runs/digits", "--data", "digits.npz", "--out", "digits-pred.csv"], work)
        table = np.genfromtxt(work / "digits-pred.csv", delimiter=",", names=True, dtype=np.int64)
        y = np.load(work / "digits.npz")["y"]
        held = tasks["digits"].eval_rows
        assert np.array_equal(table["row"], np.arange(len(y)))
        examples["digits"].update(predicted=int(len(table)),
                                  held_out_accuracy_of_predict=float(np.mean(table["label"][held] == y[held])))

        co2 = [n for n in TRAIN if n.startswith("co2-")]
        _, _, report = run(["-m", "gpurnn", "report", *(f"runs/{n}" for n in co2)], work, stdout=True)
        naive = examples["co2-s0"]["baselines"][0][1]
        # the seed to plot: one whose last state lost to the naive forecast and whose best beat it, if any
        rescued = [s for s in CO2_SEEDS if examples[f"co2-s{s}"]["evaluations"][-1][1] > naive
                   > examples[f"co2-s{s}"]["best_metric"]]
        shown = (rescued or list(CO2_SEEDS))[0]
        plotted = [f"runs/co2-s{shown}", f"runs/co2-diff-s{shown}"]
        run(["-m", "gpurnn", "plot", *plotted, "--out", "co2-curves.png"], work)
        PLOT.write_bytes((work / "co2-curves.png").read_bytes())
        run(["-m", "gpurnn", "predict", "runs/co2-diff-s0", "--data", "co2.csv", "--out", "co2-pred.csv"], work)
        lines = (work / "co2-pred.csv").read_text().splitlines()
        co2_summary = dict(naive=naive, report=report, plotted=plotted, plot=str(PLOT.relative_to(ROOT)),
                           prediction_lines=[lines[0]] + lines[-2:], predictions=len(lines) - 1,
                           seeds=list(CO2_SEEDS))
    result = dict(started_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  cpu=cpu_model(), examples=examples, co2=co2_summary)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"own_data: wrote {args.out}")


if __name__ == "__main__":
    main()
