import datetime
import math
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")


def processes_with_marker(marker: str) -> list[str]:
    """Processes whose environment holds ``FL_DEFENSE_TEST_MARK=<marker>``: everything a
    test started (and its descendants), and nothing that other runs on the machine own."""
    needle = f"FL_DEFENSE_TEST_MARK={marker}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as c:
                        cmdline = c.read().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{pid} {cmdline[:200]}")
        except OSError:
            continue
    return found


# ---------------------------------------------------------------- sampling the slow tests
#
# The slow tests (real Flower simulations, deployments, full attacks) take most of the
# suite's time.  By default a seeded third of them runs: the seed is the day's ordinal, so
# successive runs on successive days cover all of them, and it is printed in the header so
# that any run can be repeated.  ``--slow=all`` runs every one, ``--slow=none`` none;
# ``--slow-seed=S`` repeats a sample.  The environment variable FL_DEFENSE_SLOW sets the
# default of ``--slow``.
SLOW_SHARE = 1 / 3


def pytest_addoption(parser):
    parser.addoption("--slow", choices=("sample", "all", "none"), default=os.environ.get("FL_DEFENSE_SLOW", "sample"),
                     help="which tests marked slow run: a seeded third (default), all, or none")
    parser.addoption("--slow-seed", type=int, default=None,
                     help="the seed of the slow-test sample (default: today's date ordinal)")


def _slow_seed(config) -> int:
    seed = config.getoption("--slow-seed")
    return datetime.date.today().toordinal() if seed is None else seed


def slow_sample(nodeids: list[str], seed: int, share: float = SLOW_SHARE) -> set[str]:
    """The node ids of the slow tests one run keeps: ``ceil(share * n)`` of them, drawn
    by ``seed`` from the sorted ids (so the same seed keeps the same tests)."""
    ids = sorted(nodeids)
    k = min(len(ids), max(1, math.ceil(share * len(ids)))) if ids else 0
    return set(random.Random(seed).sample(ids, k))


def pytest_collection_modifyitems(config, items):
    mode = config.getoption("--slow")
    if mode == "all":
        return
    slow = [it for it in items if it.get_closest_marker("slow") is not None]
    keep = set() if mode == "none" else slow_sample([it.nodeid for it in slow], _slow_seed(config))
    dropped = [it for it in slow if it.nodeid not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [it for it in items if it not in dropped]
    config._slow_summary = (len(slow) - len(dropped), len(slow))


def pytest_report_header(config):
    mode = config.getoption("--slow")
    if mode == "all":
        return "slow tests: all"
    return (f"slow tests: {mode}, seed {_slow_seed(config)} (--slow=all runs every one, "
            f"--slow-seed=S repeats a sample)")


def pytest_terminal_summary(terminalreporter, config):
    kept = getattr(config, "_slow_summary", None)
    if kept and kept[1]:
        terminalreporter.write_line(f"slow tests run: {kept[0]} of {kept[1]} (seed {_slow_seed(config)}; "
                                    f"--slow=all runs every one)")
