"""A training run that ends on time: after its first epoch, a run with a time budget measures
its speed and, where the remaining epochs would not fit, shortens each of them to the steps that
do. The learning-rate schedule keeps its epochs; each epoch sees fewer batches."""

import math


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
