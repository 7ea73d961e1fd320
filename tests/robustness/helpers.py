"""Test-only pieces the robustness suite stacks onto the inference config: a handler that interrupts a run."""

from __future__ import annotations

import os
import signal

from ignite.engine import Engine, Events


class InterruptAfter:
    """Send this process ``signal_name`` (SIGINT as Ctrl-C does, or SIGTERM) after ``n`` events (scans, iterations,
    epochs), as a user or a scheduler would mid-run.

    Args:
        n: scans assessed before the signal.
        signal_name: ``SIGINT`` or ``SIGTERM``.
        event: the ignite event counted (``ITERATION_COMPLETED``: scans of an assessment, training iterations;
            ``EPOCH_COMPLETED``: training epochs).
    """

    def __init__(self, n: int = 1, signal_name: str = "SIGINT", event: str = "ITERATION_COMPLETED") -> None:
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(n)
        self.signum = getattr(signal, signal_name)
        self.event = getattr(Events, event)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event(once=self.n), lambda e: os.kill(os.getpid(), self.signum))
