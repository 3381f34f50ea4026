import datetime
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


def leftover_processes() -> list[str]:
    """The processes of this test (the ``mark_processes`` fixture's marker) still alive."""
    return processes_with_marker(os.environ["FL_DEFENSE_TEST_MARK"])


def _fixtures():
    import pytest

    @pytest.fixture
    def mark_processes(monkeypatch):
        """Tag every process the test starts (``FL_DEFENSE_TEST_MARK``), so that
        :func:`leftover_processes` sees only its own."""
        import uuid

        marker = uuid.uuid4().hex
        monkeypatch.setenv("FL_DEFENSE_TEST_MARK", marker)
        return marker

    @pytest.fixture(scope="module")
    def one_thread():
        """The attack runs thousands of tiny ops; on a shared 2-core machine, intra-op threads
        that wait for each other at every op make it many times slower.  One thread here."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    return mark_processes, one_thread


mark_processes, one_thread = _fixtures()


# ---------------------------------------------------------------- sampling the slow tests
#
# The slow tests (real Flower simulations, deployments, full attacks) take most of the
# suite's time.  Each declares what it costs, ``@pytest.mark.slow(seconds=S)``: its duration
# measured on 2 cores (``--durations``), which a run on another machine scales but keeps in
# proportion.  By default a run keeps, in a seeded random order of the slow tests, each one
# whose cost still fits in SLOW_BUDGET seconds (the first always), so that a day's sample
# stays within the budget however its tests fall, and successive days (the seed is the day's
# ordinal, printed in the header) cover all of them.  ``--slow=all`` runs every one,
# ``--slow=none`` none; ``--slow-seed=S`` repeats a sample.  The environment variable
# FL_DEFENSE_SLOW sets the default of ``--slow``.
SLOW_BUDGET = 200.0  # declared seconds per default run: the costs were measured on a machine about twice as
# fast as the slowest seen here, where the fast tests took ~90 s; 200 s keeps that machine near 5 minutes
# and the slow one under 10


def pytest_addoption(parser):
    parser.addoption("--slow", choices=("sample", "all", "none"), default=os.environ.get("FL_DEFENSE_SLOW", "sample"),
                     help=f"which tests marked slow run: a seeded sample of at most {SLOW_BUDGET:.0f} s of declared "
                          "cost (default), all, or none")
    parser.addoption("--slow-seed", type=int, default=None,
                     help="the seed of the slow-test sample (default: today's date ordinal)")


def _slow_seed(config) -> int:
    seed = config.getoption("--slow-seed")
    return datetime.date.today().toordinal() if seed is None else seed


def slow_sample(costs: dict[str, float], seed: int, budget: float = SLOW_BUDGET) -> set[str]:
    """The node ids of the slow tests one run keeps: walking the ids (sorted, so the order
    of collection does not matter) in the order ``seed`` shuffles them, each test whose
    declared cost ``costs[id]`` still fits in ``budget`` with those kept before it; the
    first always (a test dearer than the budget runs alone on its days)."""
    ids = sorted(costs)
    keep: set[str] = set()
    total = 0.0
    for nodeid in random.Random(seed).sample(ids, len(ids)):
        if not keep or total + costs[nodeid] <= budget:
            keep.add(nodeid)
            total += costs[nodeid]
    return keep


def slow_cost(item) -> float:
    """The ``seconds`` a slow test declares on its marker; a usage error naming the test
    if it declares none (or not a positive number)."""
    import pytest

    seconds = item.get_closest_marker("slow").kwargs.get("seconds")
    if not isinstance(seconds, (int, float)) or not seconds > 0:
        raise pytest.UsageError(f"{item.nodeid}: a slow test declares its measured cost, "
                                f"@pytest.mark.slow(seconds=S) with S > 0; got {seconds!r}")
    return float(seconds)


def pytest_collection_modifyitems(config, items):
    mode = config.getoption("--slow")
    slow = [it for it in items if it.get_closest_marker("slow") is not None]
    costs = {it.nodeid: slow_cost(it) for it in slow}
    if mode == "all":
        return
    keep = set() if mode == "none" else slow_sample(costs, _slow_seed(config))
    dropped = [it for it in slow if it.nodeid not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [it for it in items if it not in dropped]
    config._slow_summary = (len(slow) - len(dropped), len(slow), sum(costs[k] for k in keep))


def pytest_report_header(config):
    mode = config.getoption("--slow")
    if mode == "all":
        return "slow tests: all"
    return (f"slow tests: {mode}, seed {_slow_seed(config)}, budget {SLOW_BUDGET:.0f} s (--slow=all runs every "
            f"one, --slow-seed=S repeats a sample)")


def pytest_terminal_summary(terminalreporter, config):
    kept = getattr(config, "_slow_summary", None)
    if kept and kept[1]:
        terminalreporter.write_line(f"slow tests run: {kept[0]} of {kept[1]}, {kept[2]:.0f} s of declared cost "
                                    f"(seed {_slow_seed(config)}; --slow=all runs every one)")
