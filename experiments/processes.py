"""The processes a run started, found in Linux's ``/proc``: by a marker variable in their
environment (children inherit it), by parent PID, and by start time (so that a PID reused
by someone else is never signalled)."""

from __future__ import annotations

import os
from pathlib import Path




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


def marked_processes(variable: str, marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``<variable>=<marker>`` (every
    process started with it, and their children, which inherit it).  Empty where
    ``/proc`` is unavailable."""
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
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
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
