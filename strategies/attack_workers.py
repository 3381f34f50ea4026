"""Worker processes that run the hook's attacks while the federation goes on.

With ``attack-workers = N >= 1`` the hook (:class:`strategies.hook.AttackHook`) hands each
round's attack -- :func:`attacks.updates.invert_updates` on the round's intercepted uploads,
the threat models it built from what the server holds -- to one of N worker processes and
returns at once, so that the next round's training starts while the attack runs; the
scoring, the figures and the round's row follow when the attack is done
(:class:`strategies.recorder.RecordingStrategy` writes the rows in round order).

The workers are started with ``spawn`` (the ServerApp's process runs gRPC and Ray threads,
which a forked child would inherit half-copied), each importing the attack once, at the
hook's construction, while Flower starts its clients.  A worker runs torch with the
ServerApp's number of threads.  An attack computes the same reconstructions in a worker as
in the ServerApp's process: its every random draw is seeded by the attack config.

This module imports only the standard library, so that a worker's start imports no more
than the attack needs.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable


class Heartbeat:
    """While it is entered, a daemon thread writes ``<what>: <phase>, <seconds> s`` to a file
    every ``every`` seconds (atomically), so that a launcher can show progress inside a
    round; :meth:`phase` sets the phase.  The file is removed on exit."""

    def __init__(self, path: Path, what: str, every: float = 5.0) -> None:
        self.path, self.what, self.every = Path(path), what, every
        self._phase = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def phase(self, text: str) -> None:
        self._phase = text

    def _write(self, elapsed: float) -> None:
        from fl_defense.io import atomic_write_text

        try:
            atomic_write_text(self.path, f"{self.what}: {self._phase}, {elapsed:.0f} s\n")
        except OSError:
            pass

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.every):
            self._write(time.perf_counter() - start)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def invert_with_progress(progress_file: Path, what: str, *args: Any) -> Any:
    """:func:`attacks.updates.invert_updates` of ``args``, its progress written to
    ``progress_file`` (:class:`Heartbeat`) while it runs."""
    from attacks.updates import invert_updates

    with Heartbeat(progress_file, what) as beat:
        return invert_updates(*args, progress=beat.phase)


def _follow_parent(parent: int) -> None:
    """End this worker when the process that started it is gone (killed, not shut down)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _start_worker(threads: int) -> None:
    """A worker's initializer: torch's threads, Python's warnings as in the ServerApp, the
    attack's modules imported once (before the first round's attack arrives), and a thread
    that ends the worker if its parent dies without stopping it."""
    threading.Thread(target=_follow_parent, args=(os.getppid(),), daemon=True).start()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    torch.set_num_threads(threads)
    import attacks.updates  # noqa: F401  (the attack's imports, paid once per worker)


def _ready() -> int:
    return os.getpid()


class AttackWorkers:
    """``workers`` spawned processes that run submitted calls; :meth:`close` stops them.

    Args:
        workers: how many processes (>= 1).
        threads: torch threads of each (>= 1).
    """

    def __init__(self, workers: int, threads: int) -> None:
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1; got {workers}, {threads}")
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(threads,))
        # every worker starts now (a pool starts its processes on demand otherwise)
        self._warm = [self._pool.submit(_ready) for _ in range(workers)]

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """``fn(*args, **kwargs)`` in a worker (``fn`` and the arguments must pickle)."""
        return self._pool.submit(fn, *args, **kwargs)

    def started(self) -> set[int]:
        """The process ids of the workers that answered their start-up call (waits for them)."""
        return {f.result() for f in self._warm}

    def close(self) -> None:
        """Stop the workers (pending calls are cancelled; a running one is waited for)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
