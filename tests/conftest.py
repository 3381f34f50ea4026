import os
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real Flower simulation, a deployment or a full attack (all run by "
                                       "default; -m 'not slow' leaves them out while developing)")
