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


def test_a_misspelled_flag_gets_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--defence", "masking:0.4"])
    assert exc.value.code == 2
    assert "--defence (did you mean --defense?)" in capsys.readouterr().err


def test_a_flag_of_another_command_names_its_commands_and_the_config_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--max-iter", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max-iter (a flag of attack, sweep; a run takes --set attack-max-iter=VALUE)" in err


def test_errors_name_the_flag_as_typed_and_its_key(tmp_path, capsys):
    assert main(["--rounds", "-3", "--out", str(tmp_path / "o")]) == 2
    assert "--rounds (config key num-server-rounds) must be >= 1, got -3" in capsys.readouterr().err
    assert main(["attack", "--max-iter", "-5", "--out", str(tmp_path / "a")]) == 2
    assert "--max-iter (config key attack-max-iter)" in capsys.readouterr().err
    assert main(["--set", "num-server-rounds=0", "--out", str(tmp_path / "o")]) == 2
    assert "error: num-server-rounds must be >= 1" in capsys.readouterr().err  # given as a key: named as one


def test_top_level_help_shows_the_runs_flags_and_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("--defense", "--rounds", "--aggregation", "attack", "sweep", "train", "rescore", "defenses"):
        assert word in out, word


def test_the_table_explains_itself_and_counts_leaks_out_of_the_images_attacked(tmp_path):
    from experiments.cli import COLUMNS, closing_block, format_row, legend

    text = legend()
    assert all(title in text for _, title, _, _ in COLUMNS)
    row = {"round": 3, "accuracy": 0.5, "attack_leaked": 3, "attack_leaked_paper": 4, "attack_images": 4,
           "attack_ssim_adjusted_mean": 0.91, "seconds": 2.0}
    line = format_row(row)
    assert " 3/4 " in line + " " and "4/4" in line
    assert format_row({"round": 1, "attack_leaked": None, "attack_images": 4}).count("-") >= 2
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "round-001.png").write_bytes(b"")
    block = closing_block(tmp_path, [row])
    assert "metrics.jsonl" in block and "attack/round-NNN.png" in block and block.count("python run_sim.py") == 2
    assert "checkpoint.npz" not in block  # only files that are there


def test_attack_takes_the_runs_setting_and_papers_is_a_preset_of_every_command(tmp_path):
    from experiments.cli import build_parser
    from experiments.run_flags import run_config_from_args
    from experiments.setting import attack_setting
    from fl_defense.config import ExperimentConfig, parse_run_config

    run_defaults = ExperimentConfig()
    parser = build_parser()
    shared = attack_setting(parser.parse_args(["attack", "--out", str(tmp_path / "a")]))
    assert (shared.model, shared.lr, shared.batch_size, shared.local_steps, shared.images_per_client) == \
        (run_defaults.model, run_defaults.lr, run_defaults.batch_size, run_defaults.local_steps,
         run_defaults.images_per_client)
    papers = attack_setting(parser.parse_args(["attack", "--setting", "papers", "--out", str(tmp_path / "b")]))
    assert (papers.model, papers.lr, papers.batch_size, papers.local_steps, papers.images_per_client) == \
        ("lenet", 0.1, 1, 1, 1)
    flag_wins = attack_setting(parser.parse_args(["attack", "--setting", "papers", "--lr", "0.2", "--out",
                                                  str(tmp_path / "c")]))
    assert (flag_wins.model, flag_wins.lr) == ("lenet", 0.2)
    run = parse_run_config(run_config_from_args(parser.parse_args(["run", "--setting", "papers"]), tmp_path / "r"))
    assert (run.model, run.lr, run.batch_size, run.local_steps, run.images_per_client) == ("lenet", 0.1, 1, 1, 1)
