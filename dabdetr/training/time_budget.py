"""A training run that ends on time: before each epoch after the first, a run with a time budget
sizes that epoch from the speed it measured in the one before and, where the remaining epochs
would not fit, runs fewer steps in it. Re-planning every epoch follows a machine that slows down
(or speeds up again) during the run. The learning-rate schedule keeps its epochs; each epoch sees
fewer batches."""

import math
import time


def budgeted_epoch_steps(budget_s, elapsed_s, step_s, epoch_overhead_s, epochs_left, full_steps):
    """The steps each of the remaining epochs can run so that the run ends within budget_s.

    elapsed_s: the run's time so far; step_s: seconds per step, measured; epoch_overhead_s:
    seconds an epoch spends besides its steps (evaluation, checkpoint, plots), measured;
    epochs_left: epochs still to train; full_steps: an epoch's steps without a budget.
    Returns full_steps where they fit, else fewer, at least 1 (a budget already spent still
    finishes the schedule, as briefly as it can)."""
    if epochs_left <= 0:
        return full_steps
    per_epoch_s = (budget_s - elapsed_s) / epochs_left - epoch_overhead_s
    return max(1, min(full_steps, math.floor(per_epoch_s / step_s)))


class TimeBudget:
    """The budget of one training run, across its processes' lives (a resume continues it).

    epoch_steps: the steps each epoch was given, one entry per epoch planned so far (None: the
    whole epoch, from a checkpoint of before this class). A checkpoint stores state_dict(), so a
    resumed run keeps the time already spent, the speed measured and the current epoch's plan;
    time between a run's processes (a preempted job waiting in a queue) does not count.
    """

    def __init__(self, budget_min, epochs, clock=time.monotonic):
        self.budget_s, self.epochs, self.clock = budget_min * 60, epochs, clock
        self.spent_before_s = 0.0  # by earlier processes of the run
        self.started = None  # this process's clock when the run (re)started
        self.step_s = None  # the last epoch's seconds per step
        self.overhead_s, self.overhead_epochs = 0.0, 0  # the seconds of evaluation and plots, summed over epochs
        self.epoch_steps = []

    def start(self):
        self.started = self.clock()

    def spent_s(self):
        return self.spent_before_s + (self.clock() - self.started if self.started is not None else 0.0)

    def record_training(self, seconds, steps):
        """An epoch's training (or the part of it this process ran) took `seconds` for `steps`."""
        if steps > 0:
            self.step_s = seconds / steps

    def record_overhead(self, seconds):
        """An epoch spent `seconds` besides its steps (evaluation, plots)."""
        self.overhead_s += seconds
        self.overhead_epochs += 1

    def steps_for(self, epoch, full_steps):
        """The steps epoch `epoch` runs: its plan if it has one (a resume within it), else planned
        now: whole until a speed is measured, then what the remaining time allows. Returns
        (steps, plan), where plan is a dict describing a new plan (for the log), else None."""
        if epoch < len(self.epoch_steps):
            planned = self.epoch_steps[epoch]
            return (full_steps if planned is None else min(full_steps, planned)), None
        self.epoch_steps.extend([None] * (epoch - len(self.epoch_steps)))  # epochs no plan was kept for
        if self.step_s is None:
            self.epoch_steps.append(full_steps)
            return full_steps, None
        # An epoch's overhead: the mean measured; the final outputs count as one more.
        overhead_s = self.overhead_s / max(self.overhead_epochs, 1)
        spent_s = self.spent_s()
        steps = budgeted_epoch_steps(self.budget_s, spent_s + overhead_s, self.step_s, overhead_s,
                                     self.epochs - epoch, full_steps)
        self.epoch_steps.append(steps)
        projected_s = spent_s + (self.epochs - epoch) * (steps * self.step_s + overhead_s) + overhead_s
        return steps, {"epoch": epoch, "steps": steps, "full_steps": full_steps, "step_s": self.step_s,
                       "overhead_s": overhead_s, "spent_min": spent_s / 60, "projected_min": projected_s / 60}

    def state_dict(self):
        return {"spent_s": self.spent_s(), "step_s": self.step_s,
                "overhead_s": self.overhead_s, "overhead_epochs": self.overhead_epochs,
                "epoch_steps": list(self.epoch_steps)}

    def load_state_dict(self, state):
        self.spent_before_s, self.step_s = state["spent_s"], state["step_s"]
        self.overhead_s, self.overhead_epochs = state["overhead_s"], state["overhead_epochs"]
        self.epoch_steps = list(state["epoch_steps"])
