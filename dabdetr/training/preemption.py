"""Stopping a training run cleanly when the cluster asks for it.

SLURM (and most schedulers) send SIGTERM, or a configured SIGUSR1, some time before they kill a
job. While a PreemptionRequest is active those signals only set a flag; the Trainer looks at it
after every step, where all processes agree on it in one collective, write a mid-epoch
checkpoint, leave through a barrier and raise TrainingPreempted. The handler does nothing else,
so a second signal during the checkpoint write interrupts nothing (and the write is atomic).
"""

import os
import signal
import threading

from dabdetr import distributed

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: temporary failure, run the same command again to resume


class TrainingPreempted(Exception):
    """Training stopped on a preemption signal after writing `checkpoint` (epoch, step: where the
    resumed run continues)."""

    def __init__(self, signal_name, epoch, step, checkpoint):
        super().__init__(f"stopped by {signal_name} at epoch {epoch} step {step}; state saved in {checkpoint}")
        self.signal_name, self.epoch, self.step, self.checkpoint = signal_name, epoch, step, checkpoint


class PreemptionRequest:
    """Context manager that turns PREEMPTION_SIGNALS into a flag (in the main thread; elsewhere,
    where Python cannot install handlers, it never fires)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = self.received or signum

    def agreed(self):
        """Whether any process received a signal. A collective: every process calls it at the same step."""
        return distributed.all_reduce_mean({"stop": float(self.received is not None)})["stop"] > 0

    def signal_name(self):
        return signal.Signals(self.received).name if self.received else "a signal to another process"


def ignore_preemption_signals(main_pid, worker_id=None):
    """DataLoader worker_init_fn (bind main_pid, the training process, with functools.partial):
    the worker outlives PREEMPTION_SIGNALS, which the main process handles (a worker killed by
    one would fail the loader before the checkpoint is written), except a SIGTERM from the main
    process itself, on which it exits at once, as torch's own worker handler does. That one
    comes when Python exits after an error raised in the loader: the error's traceback keeps the
    loader alive, so its workers are not shut down but terminated, and a worker that ignored
    the signal would hang the exit. Python's signal handlers cannot tell who sent a signal, so
    a thread takes them with sigwaitinfo, which can; where that does not exist (macOS,
    Windows), the workers keep the default handling."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)  # the thread below inherits the mask
    threading.Thread(target=_exit_on_signal_from, args=(main_pid,), name="preemption-signals", daemon=True).start()


def _exit_on_signal_from(main_pid):
    while signal.sigwaitinfo(PREEMPTION_SIGNALS).si_pid != main_pid:
        pass
    os._exit(0)  # success, like torch's handler: the loader reports a worker's failing exit as an error
