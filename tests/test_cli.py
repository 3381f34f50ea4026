"""Bad input through the command line: rejected before anything starts, naming key and value."""

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

ROOT = Path(__file__).resolve().parent.parent

BAD_RUNS = [
    (["--rounds", "0"], ["num-server-rounds", "0"]),
    (["--clients", "-2"], ["num-clients", "-2"]),
    (["--defense", "maskng:0.4"], ["maskng", "masking"]),
    (["--defense", "masking:1.0"], ["masking", "1.0"]),
    (["--defense", "pruning:-0.5"], ["pruning", "-0.5"]),
    (["--defense", "clipping:-1"], ["clipping", "-1"]),
    (["--defense", "noising:-0.1"], ["noising", "-0.1"]),
    (["--defense", "masking"], ["masking", "needs a value"]),
    (["--defense", "clipping:1,per-leyer"], ["per-leyer", "per-layer"]),
    (["--aggregation", "mode"], ["aggregation", "mode"]),
    (["--strategy", "FedProx"], ["strategy", "FedProx"]),
    (["--partition", "dirichlet:0"], ["dirichlet", "0"]),
    (["--partition", "pathological:0"], ["pathological", "0"]),
    (["--partition", "shards:2"], ["shards:2"]),
    (["--dataset", "cifar100"], ["dataset", "cifar100"]),
    (["--model", "resnet18"], ["model", "resnet18"]),
    (["--lr", "0"], ["lr", "0"]),
    (["--local-steps", "0"], ["local-steps", "0"]),
    (["--batch-size", "-1"], ["batch-size", "-1"]),
    (["--attacker", "oracle"], ["attacker", "oracle"]),
    (["--set", "num-server-round=3"], ["num-server-round", "num-server-rounds"]),
    (["--set", "dropout-rate=1.5"], ["dropout-rate", "1.5"]),
    (["--set", "byzantine-mode=flip"], ["byzantine-mode", "flip"]),
    (["--set", "fail-clients=x"], ["fail-clients", "x"]),
    (["--set", "leak-threshold=2"], ["leak-threshold", "2"]),
    (["--set", "krum-malicious=-1"], ["krum-malicious", "-1"]),
    (["--set", "nonsense"], ["KEY=VALUE", "nonsense"]),
    (["--set", "fail-clients=30"], ["fail-clients", "30"]),
    (["--set", "slow-seconds=-2"], ["slow-seconds", "-2"]),
    # formal privacy: the Gaussian mechanism, Flower's DP wrappers, SecAgg+ and how they combine
    (["--defense", "dp-gaussian:0"], ["dp-gaussian", "Z > 0", "0"]),
    (["--defense", "dp-gaussian:1", "--set", "dp-clip=0"], ["dp-clip", "0"]),
    (["--defense", "dp-gaussian:1", "--model", "bncnn"], ["dp-gaussian", "bncnn", "BatchNorm"]),
    (["--set", "dp-strategy=client-side-fixed-clipping", "--model", "bncnn"], ["dp-strategy", "bncnn", "counter"]),
    (["--set", "dp-delta=1"], ["dp-delta", "1"]),
    (["--set", "dp-neighbouring=swap-one"], ["dp-neighbouring", "swap-one", "replace-one"]),
    (["--set", "dp-strategy=local"], ["dp-strategy", "local"]),
    (["--set", "dp-noise-multiplier=-1"], ["dp-noise-multiplier", "-1"]),
    (["--secagg", "--aggregation", "median"], ["secure-aggregation", "median", "sum"]),
    (["--secagg", "--strategy", "FedMedian"], ["secure-aggregation", "FedMedian"]),
    (["--secagg", "--strategy", "FedTrimmedAvg"], ["secure-aggregation", "FedTrimmedAvg"]),
    (["--secagg", "--strategy", "Krum"], ["secure-aggregation", "Krum"]),
    (["--secagg", "--set", "dp-strategy=server-side-fixed-clipping"], ["secure-aggregation", "server-side"]),
    (["--secagg", "--attack-every", "1", "--local-steps", "2"], ["secure-aggregation", "attack-every", "local-steps"]),
    (["--secagg", "--attack-every", "1", "--model", "bncnn"], ["secure-aggregation", "attack-every", "bncnn"]),
    (["--secagg", "--clients", "1"], ["num-clients", "2 clients"]),
    (["--set", "secagg-reconstruction-threshold=3"], ["secagg-reconstruction-threshold", "3"]),
    (["--set", "secagg-clipping-range=-1"], ["secagg-clipping-range", "-1"]),
]


@pytest.mark.parametrize("argv,words", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_run_rejects_bad_input_before_starting(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, err
    assert not out.exists()  # nothing started, nothing written


def test_missing_data_folder_is_named(tmp_path, capsys):
    folder = tmp_path / "no-data-here"
    rc = main(["--dataset", "mnist", "--data-dir", str(folder), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "MNIST" in err


def test_set_reads_text_keys_as_text():
    import argparse

    from experiments.cli import run_config_from_args

    args = argparse.Namespace(sets=["fail-clients=3", "slow-clients=1,2", "lr=0.5"])
    got = run_config_from_args(args, Path("/tmp/x"))
    assert got["fail-clients"] == "3" and got["slow-clients"] == "1,2" and got["lr"] == 0.5


def test_run_sim_process_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--defense", "masking:7",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "masking" in proc.stderr and "7" in proc.stderr


def test_secagg_with_median_exits_2_naming_the_conflict(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--secagg", "--aggregation", "median",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "secure-aggregation" in proc.stderr and "median" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
