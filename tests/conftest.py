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
