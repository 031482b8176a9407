"""What a training run does with its held-out scores and its learning rate: the best evaluation so
far (kept as best.npz, and what early stopping counts from) and the learning-rate schedule.

    schedule = Schedule("cosine", lr=1e-2, steps=2000, warmup=100, min_lr=1e-4)
    opt.lr = schedule.lr(step)              # before update ``step`` (1, 2, ..., steps)
    schedule.evaluated(improved)            # after each evaluation (reduce-on-plateau counts them)

The rate of update s (counted from 1), for a base rate lr:

    constant   lr
    cosine     min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p = (s - 1 - W) / (steps - W)
    step       lr * decay ** ((s - 1) // decay_every)
    plateau    lr * decay ** r, r the reductions so far: one each time ``decay_every`` evaluations
               in a row have not improved on the best (the count starts again after a reduction)

and with ``warmup`` W > 0, the rate is multiplied by s / W for the first W updates. These are
torch.optim.lr_scheduler's CosineAnnealingLR (T_max = steps - W, after the warm-up), StepLR and
ReduceLROnPlateau (patience = decay_every - 1, threshold 0), stepped once an update. Everything
that is not a function of s (the plateau's reductions and count, the best evaluation) is in
``state()``, which the run saves in each checkpoint, so that a resumed run continues exactly.
"""

import math

from .runs import number_or


class Schedule:
    """The learning rate of each update (see the module docstring)."""

    def __init__(self, kind, lr, steps, warmup=0, decay=0.1, decay_every=None, min_lr=0.0):
        self.kind, self.base, self.steps = kind, float(lr), int(steps)
        self.warmup, self.decay, self.decay_every, self.min_lr = int(warmup), float(decay), decay_every, float(min_lr)
        self.reductions = 0            # plateau: times the rate was cut
        self.stalled = 0               # plateau: evaluations in a row without improvement since the last cut

    def lr(self, step):
        """The learning rate of update ``step`` (1-based)."""
        s = int(step)
        if self.kind == "cosine":
            span = max(1, self.steps - self.warmup)
            p = min(1.0, max(0.0, (s - 1 - self.warmup) / span))
            rate = self.min_lr + (self.base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        elif self.kind == "step":
            rate = self.base * self.decay ** ((s - 1) // self.decay_every)
        elif self.kind == "plateau":
            rate = self.base * self.decay ** self.reductions
        else:
            rate = self.base
        if self.warmup and s <= self.warmup:
            rate *= s / self.warmup
        return rate

    def evaluated(self, improved):
        """Count an evaluation; returns whether the rate was cut (plateau only)."""
        if self.kind != "plateau":
            return False
        self.stalled = 0 if improved else self.stalled + 1
        if self.stalled >= self.decay_every:
            self.reductions += 1
            self.stalled = 0
            return True
        return False

    def state(self):
        return {"reductions": self.reductions, "stalled": self.stalled}

    def load_state(self, state):
        state = state if isinstance(state, dict) else {}
        self.reductions = int(number_or(state.get("reductions"), 0))
        self.stalled = int(number_or(state.get("stalled"), 0))


class Best:
    """The best held-out evaluation so far, by the task's metric (``higher_is_better``), and the
    evaluations since it (what early stopping counts)."""

    def __init__(self, higher_is_better):
        self.higher = bool(higher_is_better)
        self.step = self.metric = self.loss = None
        self.since = 0

    def better(self, metric):
        """Whether ``metric`` improves strictly on the best (a NaN never does)."""
        if not math.isfinite(metric):
            return False
        return self.metric is None or (metric > self.metric if self.higher else metric < self.metric)

    def evaluated(self, step, loss, metric):
        """Count an evaluation; returns whether it is the new best."""
        if self.better(metric):
            self.step, self.metric, self.loss, self.since = int(step), float(metric), float(loss), 0
            return True
        self.since += 1
        return False

    def state(self):
        return {"step": self.step, "eval_metric": self.metric, "eval_loss": self.loss, "since": self.since}

    def load_state(self, state):
        state = state if isinstance(state, dict) else {}
        if isinstance(state.get("step"), int) and not isinstance(state.get("step"), bool):
            self.step = state["step"]
            self.metric = number_or(state.get("eval_metric"), math.nan)
            self.loss = number_or(state.get("eval_loss"), math.nan)
        self.since = int(number_or(state.get("since"), 0))
