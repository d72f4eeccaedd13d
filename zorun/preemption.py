"""Stop requests by signal: finish the current step, checkpoint, write the summary, exit non-zero.

SIGTERM (SLURM preemption and time limits, `kill`, Kubernetes) and SIGINT
(Ctrl-C) only set a flag that the training loop reads between steps; a second
signal interrupts at once. A launcher that handles SIGUSR1/SIGUSR2 itself
(submitit requeues the job on SIGUSR2) keeps doing so: the run intercepts the
signal, saves its checkpoint, and then hands the signal to the launcher's
handler, which requeues the job into the same directory, where it resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

ALWAYS = (signal.SIGTERM, signal.SIGINT)
IF_HANDLED = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class StopSignals:
    """Context manager: while active, the signals above set `received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.second: Optional[int] = None  # a second signal, which stops the run at once
        self.previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread
        for sig in ALWAYS + IF_HANDLED:
            current = signal.getsignal(sig)
            if sig in IF_HANDLED and not _python_handler(current):
                continue  # nobody asked for SIGUSR1/2: keep their default meaning
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            self.second = signum
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.received = signum
        log.warning("%s received: stopping after the current step (checkpoint, then exit); send it again to "
                    "stop at once", signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or 0)

    @property
    def interrupt_exit_code(self) -> int:
        """128 + the signal that stopped the run at once (a second SIGTERM: 143; Ctrl-C: 130)."""
        return 128 + int(self.second or signal.SIGINT)

    def hand_over(self) -> None:
        """Call the handler that was installed before ours for the signal received (submitit's requeue)."""
        handler = self.previous.get(self.received) if self.received is not None else None
        if _python_handler(handler) and handler is not signal.default_int_handler:
            handler(self.received, None)


def _python_handler(handler: Any) -> bool:
    return callable(handler) and handler not in (signal.SIG_DFL, signal.SIG_IGN)
