"""Ctrl-C / SIGTERM during training: finish the current iteration, checkpoint it, then stop.

A signal never lands in the middle of an optimizer step: :class:`StopRequest` turns the first
SIGINT or SIGTERM into a request that the training loop honours at the next iteration boundary,
where it writes a checkpoint of that iteration (atomically, like every checkpoint) and raises
:class:`TrainingInterrupted`, which the command reports in one line naming what was saved. While
validating (the model is not being changed), a signal stops at once and the checkpoint is that of
the last finished iteration. A second signal stops immediately without saving (the newest
checkpoint on disk is then the last one written).

DataLoader workers ignore SIGINT/SIGTERM (:func:`ignore_stop_signals_in_worker`): a Ctrl-C reaches
the whole process group, and a worker that died of it would fail the batch the loop is waiting for.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from sr_train.errors import TrainError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(TrainError):
    """Training stopped on a signal; ``checkpoint`` (None if nothing could be saved) holds ``iteration``."""

    def __init__(self, message: str, *, iteration: int, checkpoint: Path | None, weights: Path | None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.weights = weights


class StopRequest:
    """SIGINT/SIGTERM handlers (main thread only) between :meth:`install` and :meth:`restore`
    (or for a ``with`` block)."""

    def __init__(self, *, announce: bool = True) -> None:
        self.signum: int | None = None
        self.count = 0
        self.immediate = False
        self.announce = announce
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.signum = signum
        if self.immediate or self.count > 1:
            raise KeyboardInterrupt
        if self.announce:
            print(f"\nsr-train: {signal.Signals(signum).name} received: finishing this iteration and saving a "
                  "checkpoint (send it again to stop at once without saving)", file=sys.stderr, flush=True)

    def install(self) -> StopRequest:
        """Take over SIGINT and SIGTERM (a no-op outside the main thread, where Python forbids it)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """Within the block a signal raises KeyboardInterrupt right away (the state is consistent)."""
        before = self.immediate
        self.immediate = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self.immediate = before


def ignore_stop_signals_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave SIGINT/SIGTERM to the training process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
