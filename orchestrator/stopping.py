"""Stopping a run on request: SIGTERM (`ray job stop`, Kubernetes evicting a pod, a spot node being
reclaimed) or Ctrl-C asks the loop to stop after its current cycle, with a checkpoint.

`GracefulStop` installs the handlers for the length of a run. The loop polls `requested` after each
cycle; a watchdog exits the process if the stop takes longer than its timeout, and a second signal
exits at once. Either way the last complete checkpoint is what the next run resumes from.
"""

import os
import signal
import threading
import time


class StopRequested(Exception):
    """The run was asked to stop; it checkpointed at `step` (the next run of the same command resumes there)."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} at generator step {step}; rerun the same command to resume")
        self.step, self.signal_name = step, signal_name


class GracefulStop:
    """While active (a `with` block in the main thread), SIGTERM and SIGINT set `requested` instead of killing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, timeout_s: float):
        self.timeout_s, self.requested, self.signal_name, self.since = timeout_s, False, "", None
        self.previous: dict = {}
        self.finished = threading.Event()  # set when the block ends: the watchdog then stands down

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self.finished.set()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:  # asked twice: no more waiting
            print(f"{name} again: exiting now, without a checkpoint (the last complete one stays)", flush=True)
            os._exit(128 + signum)
        self.requested, self.signal_name, self.since = True, name, time.monotonic()
        print(
            f"{name}: stopping after this cycle with a checkpoint (at most {self.timeout_s:.0f} s; "
            "send it again to exit now)",
            flush=True,
        )
        threading.Thread(target=self._watchdog, args=(signum,), daemon=True).start()

    def _watchdog(self, signum: int) -> None:
        if self.finished.wait(self.timeout_s):  # the stop finished in time
            return
        print(
            f"stop took over fault_tolerance.stop_timeout_s={self.timeout_s:.0f} s: exiting without a checkpoint "
            "(the last complete one stays)",
            flush=True,
        )
        os._exit(128 + signum)
