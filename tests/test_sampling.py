"""Seeded client sampling (strategies/sampling.py): the same seed samples the same
partition ids each round, whatever Flower's node ids and registration order."""

import json

import numpy as np
import pytest
from flwr.common import Code, GetPropertiesRes, Status
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg

from fl_defense.protocol import PARTITION_ID
from strategies.sampling import SAMPLED, SeededSampling

TIMING_KEYS = {"seconds", "attack_seconds"}


class FakeProxy:
    """A node: a random-looking node id, and the partition id it reports."""

    def __init__(self, cid: str, partition: int) -> None:
        self.cid, self.partition, self.asked = cid, partition, 0

    def get_properties(self, ins, timeout, group_id):
        self.asked += 1
        return GetPropertiesRes(status=Status(Code.OK, ""), properties={PARTITION_ID: self.partition})


def manager(partitions, node_ids):
    m = SimpleClientManager()
    proxies = [FakeProxy(str(n), p) for n, p in zip(node_ids, partitions)]
    for proxy in proxies:
        m.register(proxy)
    return m, proxies


def sampled(strategy, m, rounds):
    out = []
    for r in rounds:
        instructions = strategy.configure_fit(r, None, m)
        out.append(sorted(proxy.partition for proxy, _ in instructions))
    return out


def test_same_seed_same_partitions_whatever_the_node_ids():
    parts = list(range(10))
    a = sampled(SeededSampling(FedAvg(fraction_fit=0.3), seed=5), manager(parts, range(100, 110))[0], range(1, 6))
    rng = np.random.default_rng(0)  # other node ids, registered in another order
    order = rng.permutation(10)
    m2, _ = manager([parts[i] for i in order], rng.integers(1, 2**62, size=10))
    b = sampled(SeededSampling(FedAvg(fraction_fit=0.3), seed=5), m2, range(1, 6))
    assert a == b
    assert all(len(s) == 3 for s in a)
    assert len({tuple(s) for s in a}) > 1  # rounds differ
    c = sampled(SeededSampling(FedAvg(fraction_fit=0.3), seed=6), manager(parts, range(10))[0], range(1, 6))
    assert c != a


def test_partition_ids_are_asked_once_and_only_for_a_subset():
    m, proxies = manager(list(range(6)), range(6))
    full = SeededSampling(FedAvg(fraction_fit=1.0), seed=0)
    assert len(sampled(full, m, [1])[0]) == 6
    assert all(p.asked == 0 for p in proxies)  # everyone: nothing to ask
    part = SeededSampling(FedAvg(fraction_fit=0.5), seed=0)
    sampled(part, m, [1, 2, 3])
    assert all(p.asked == 1 for p in proxies)
    # the round's row says who was sampled
    part.configure_fit(4, None, m)
    _, metrics = part.aggregate_fit(4, [], [])
    assert len(metrics[SAMPLED].split(",")) == 3


@pytest.mark.slow
def test_fraction_fit_0_3_gives_identical_metrics_twice(tmp_path):
    from experiments.launcher import run_simulation

    rows = []
    for k in range(2):
        res = run_simulation({"out-dir": str(tmp_path / f"run{k}"), "num-server-rounds": 3, "num-clients": 7,
                              "fraction-fit": 0.3, "local-steps": 2, "seed": 3, "attack-every": 0}, timeout=600)
        rows.append([{key: v for key, v in r.items() if key not in TIMING_KEYS} for r in res.rows])
    assert rows[0] == rows[1]
    assert all(r["clients_ok"] == 2 and len(r[SAMPLED].split(",")) == 2 for r in rows[0])
    print("sampled per round:", [r[SAMPLED] for r in rows[0]], "accuracy:", [r["accuracy"] for r in rows[0]])
    assert json.loads((tmp_path / "run1" / "summary.json").read_text())["status"] == "completed"


def test_server_sampler_and_plain_reference_draw_the_same_clients():
    """The plain-PyTorch reference of bench_federation samples what the server samples."""
    import sys
    from pathlib import Path

    from strategies.sampling import SeededSampling

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.bench_federation import sample_clients

    class Proxy:
        def __init__(self, cid):
            self.cid = cid

    class Manager:
        def __init__(self, proxies):
            self.proxies = {p.cid: p for p in proxies}

        def wait_for(self, n, timeout=0):
            return True

        def all(self):
            return self.proxies

    proxies = [Proxy(f"node-{i}") for i in range(100)]
    wrapper = SeededSampling(None, seed=7)
    wrapper._partition = {p.cid: 99 - i for i, p in enumerate(proxies)}  # node ids unrelated to partitions
    for rnd in (1, 2, 3):
        manager = wrapper._manager(Manager(proxies), rnd)
        manager.sample(10)
        assert list(manager.sampled) == sample_clients(7, rnd, 100, 0.1)
