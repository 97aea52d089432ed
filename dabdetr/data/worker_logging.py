"""The main process's log handlers in DataLoader workers.

A worker started by fork inherits the main process's logging handlers. One started by spawn or
forkserver (the default start method on macOS and Windows, and on Linux from Python 3.14) starts
with none, so what a dataset logs there (an unreadable image it skips) would miss the run's log
file and reach the console through logging's last-resort handler, unformatted."""

import logging
import sys

LOGGERS = ("", "dabdetr")  # the root (the CLI's console handler) and the package's (a run's train.log)


class WorkerLogHandlers:
    """A DataLoader worker_init_fn (or part of one) that gives a worker the handlers the main
    process has when the loader starts its workers: files (reopened for appending) and the
    console streams, with their formatters and levels, and the loggers' levels. What to copy is
    read when the loader pickles it for a spawned worker; a forked worker, which is not sent a
    pickled copy and keeps the handlers it inherited, gets nothing added."""

    def __init__(self):
        self.loggers = []  # (logger name, level, [(kind, path, level, formatter)])

    def __getstate__(self):
        return {"loggers": [(name, logging.getLogger(name).level, describe_handlers(logging.getLogger(name)))
                            for name in LOGGERS]}

    def __call__(self, worker_id=None):
        for name, level, handlers in self.loggers:
            logger = logging.getLogger(name)
            logger.setLevel(level)
            for kind, path, handler_level, formatter in handlers:
                handler = logging.FileHandler(path) if kind == "file" else logging.StreamHandler(getattr(sys, kind))
                handler.setLevel(handler_level)
                handler.setFormatter(formatter)
                logger.addHandler(handler)


def describe_handlers(logger):
    """What a new process needs to rebuild logger's file and console handlers; others are left out."""
    described = []
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            described.append(("file", handler.baseFilename, handler.level, handler.formatter))
        elif isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            kind = "stderr" if handler.stream is sys.stderr else "stdout"
            described.append((kind, None, handler.level, handler.formatter))
    return described
