"""The processes a run started, found in Linux's ``/proc``: by a marker variable in their
environment (children inherit it), by parent PID, and by start time (so that a PID reused
by someone else is never signalled); and the watchdog that cleans up after a launcher
that was killed.

Why a watchdog: the launcher starts the SuperLink and ``flwr run`` in their own sessions
(so that it can stop each group), and Flower starts the simulation and Ray's daemons
(``gcs_server``, ``raylet``, the workers) from there; killed with SIGKILL, the launcher
cannot stop any of them, and a parent-death signal would reach only its direct
children.  Every one of them inherits the run's marker variable, though (checked in
``/proc``: ``tests/test_resume.py``).  :func:`watch`, run as
``python -m experiments.processes watch ...`` in a session of its own, polls the
launcher's PID (with its start time) and, once it is gone, :func:`sweep`s every process
that carries the marker (SIGTERM, then SIGKILL) and deletes the run's Flower state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


def proc_start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks): with the PID it
    names one process, so a PID reused by someone else is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def proc_table() -> dict[int, int]:
    """``pid -> parent pid`` of every process we can see (Linux ``/proc``)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return table


def marked_sessions(variable: str, marker: str) -> set[int]:
    """Session ids led by a marked process (the sessions the launcher started its
    SuperLink and ``flwr run`` in): what Ray starts there stays in the session even where
    it overwrites the environment that carries the marker."""
    marked = set(marked_processes(variable, marker))
    found = set()
    for pid in marked:
        try:
            sid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        if sid in marked:
            found.add(sid)
    return found


def marked_processes(variable: str, marker: str, sessions: Sequence[int] = ()) -> list[int]:
    """PIDs of live processes whose environment holds ``<variable>=<marker>`` (every
    process started with it, and their children, which inherit it), or that belong to one
    of the ``sessions`` (session ids: a process that renames itself, as Ray's agents do,
    can overwrite its environment where ``/proc`` reads it).  Empty where ``/proc`` is
    unavailable."""
    if not marker:
        raise ValueError(f"marker must be a non-empty string, got {marker!r}")
    needle = f"{variable}={marker}".encode()
    found = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and (needle in env.split(b"\0") or int(fields[3]) in sessions):
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int, start: str | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group that ``pid`` leads (we start every process with
    ``start_new_session=True``, so its PGID is its PID)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(variable: str, marker: str, grace: float = 5.0, attempts: int = 20, sessions: Sequence[int] = ()) -> int:
    """Stop every live process whose environment holds ``<variable>=<marker>`` or that
    belongs to one of ``sessions`` (:func:`marked_processes`): SIGTERM, up to ``grace``
    seconds to exit, then SIGKILL until none is left (a dying Ray may start a worker or
    two).  Returns how many were found."""
    first = {pid: proc_start_time(pid) for pid in marked_processes(variable, marker, sessions)}
    for pid, start in first.items():
        _signal(pid, start, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) and not zombie(p) for p, s in first.items()):
        time.sleep(0.2)
    for _ in range(attempts):
        left = {pid: proc_start_time(pid) for pid in marked_processes(variable, marker, sessions)}
        if not left:
            break
        for pid, start in left.items():
            _signal(pid, start, signal.SIGKILL)
        time.sleep(0.3)
    return len(first)


def _signal(pid: int, start: str | None, sig: int) -> None:
    if alive(pid, start):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


#: Seconds the watchdog goes on looking for marked processes after its first sweep: a dying
#: Ray can still start one (a dashboard agent, a worker) after the others are gone.
LINGER = 15.0


def watch(pid: int, start: str | None, variable: str, marker: str, cleanup: Sequence[str] = (),
          poll: float = 0.5, linger: float = LINGER, scan_every: float = 2.0) -> int:
    """Wait until process ``pid`` (started at ``start``) is gone, noting every ``scan_every``
    seconds the sessions that marked processes lead (:func:`marked_sessions`); then
    :func:`sweep` the marked processes and those sessions, delete the ``cleanup`` folders,
    and sweep again whatever of them appears in the next ``linger`` seconds.  Returns the
    number swept."""
    sessions: set[int] = set()
    scanned = -float("inf")
    while alive(pid, start) and not zombie(pid):
        if time.monotonic() - scanned >= scan_every:
            sessions |= marked_sessions(variable, marker)
            scanned = time.monotonic()
        time.sleep(poll)
    sessions |= marked_sessions(variable, marker)  # the launcher is gone; its sessions' leaders live on
    sessions.discard(os.getsid(0))
    found = sweep(variable, marker, sessions=tuple(sessions))
    for folder in cleanup:
        shutil.rmtree(folder, ignore_errors=True)
    deadline = time.monotonic() + linger
    while time.monotonic() < deadline:
        time.sleep(poll)
        if marked_processes(variable, marker, tuple(sessions)):
            found += sweep(variable, marker, grace=1.0, sessions=tuple(sessions))
    return found


def local_superlinks(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLinks that ``flwr run`` started for ``flwr_home``: the
    ``flower-superlink`` processes whose command line logs to
    ``<flwr_home>/local-superlink/superlink.log`` (the path Flower 1.42 gives the SuperLink it
    starts when a run names the local federation)."""
    log = str(Path(flwr_home).resolve() / "local-superlink" / "superlink.log")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args if a]
        if any(w.endswith("flower-superlink") for w in words[:2]) and "--log-file" in words \
                and words[words.index("--log-file") + 1:words.index("--log-file") + 2] == [log]:
            found.append(int(entry.name))
    return found


def stop_local_superlink(flwr_home: Path, grace: float = 10.0) -> list[int]:
    """Stop, by PID, every local SuperLink ``flwr run`` started for ``flwr_home`` and what it
    started (its session's process group: SuperExec, the simulation, Ray): SIGTERM, then
    SIGKILL after ``grace`` seconds.  Returns the SuperLinks' PIDs."""
    pids = {pid: proc_start_time(pid) for pid in local_superlinks(flwr_home)}
    for pid, start in pids.items():
        if alive(pid, start):
            kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) and not zombie(p) for p, s in pids.items()):
        time.sleep(0.2)
    for pid, start in pids.items():
        if alive(pid, start) and not zombie(pid):
            kill_group(pid, signal.SIGKILL)
    return list(pids)


def stop_process_group(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the process group started with ``proc`` (it leads its own session), then
    SIGKILL what is left after ``grace`` seconds."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member of its group
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    if watchdog is None:
        return
    watchdog.terminate()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait(timeout=5)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.processes")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="when PID is gone, stop every process marked VARIABLE=MARKER")
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--start", default=None, help="the start time of PID (/proc/PID/stat field 22)")
    w.add_argument("--variable", required=True)
    w.add_argument("--marker", required=True)
    w.add_argument("--cleanup", action="append", default=[], help="a folder to delete afterwards")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the launcher ended normally
    watch(args.pid, args.start, args.variable, args.marker, args.cleanup)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
