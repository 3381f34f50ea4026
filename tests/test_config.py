import tomllib
from pathlib import Path

import pytest

from fl_defense.config import ConfigError, ExperimentConfig, default_run_config, parse_run_config
from fl_defense.partition import PartitionSpec

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_repeats_every_default():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == default_run_config()


def test_defaults_parse_and_roundtrip():
    cfg = parse_run_config(default_run_config())
    assert cfg == ExperimentConfig()
    assert parse_run_config(cfg.to_run_config()) == cfg


def test_overrides_are_typed():
    cfg = parse_run_config({"num-server-rounds": 3, "lr": 1, "defense": "masking:0.4",
                            "partition": "dirichlet:0.3", "out-dir": "/tmp/x"})
    assert cfg.num_server_rounds == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.partition == PartitionSpec("dirichlet", 0.3)
    assert cfg.defense.name == "masking" and cfg.defense.value == 0.4
    # parsed once: the typed specs travel; the flat mapping carries their canonical text
    assert cfg.to_run_config()["defense"] == "masking:0.4"
    assert cfg.to_run_config()["partition"] == "dirichlet:0.3"


@pytest.mark.parametrize("text,expected", [
    ("iid", PartitionSpec("iid", None)),
    ("dirichlet:0.5", PartitionSpec("dirichlet", 0.5)),
    ("pathological:2", PartitionSpec("pathological", 2)),
])
def test_partition_spec(text, expected):
    assert PartitionSpec.parse(text) == expected
    assert PartitionSpec.parse(str(expected)) == expected


BAD = [
    ({"rounds": 3}, ["rounds", "num-server-rounds"]),
    ({"num-server-rounds": 0}, ["num-server-rounds", "0"]),
    ({"num-server-rounds": 2.5}, ["num-server-rounds", "2.5"]),
    ({"num-server-rounds": "3"}, ["num-server-rounds", "'3'"]),
    ({"num-clients": -1}, ["num-clients", "-1"]),
    ({"fraction-fit": 0.0}, ["fraction-fit", "0.0"]),
    ({"fraction-evaluate": 1.5}, ["fraction-evaluate", "1.5"]),
    ({"dataset": "mnsit"}, ["mnsit", "mnist"]),
    ({"model": "resnet"}, ["resnet", "lenet"]),
    ({"local-steps": 0}, ["local-steps", "0"]),
    ({"batch-size": 0}, ["batch-size", "0"]),
    ({"lr": -0.1}, ["lr", "-0.1"]),
    ({"lr": float("nan")}, ["lr", "nan"]),
    ({"defense": "maskng:0.4"}, ["maskng", "masking"]),
    ({"defense": "masking:1.2"}, ["masking", "1.2"]),
    ({"defense": "masking:-0.1"}, ["masking", "-0.1"]),
    ({"defense": "clipping:0"}, ["clipping", "0"]),
    ({"defense": "noising:-1"}, ["noising", "-1"]),
    ({"partition": "dirichlet"}, ["dirichlet"]),
    ({"partition": "dirichlet:-1"}, ["dirichlet", "-1"]),
    ({"partition": "pathological:1.5"}, ["pathological", "1.5"]),
    ({"partition": "non-iid"}, ["non-iid"]),
    ({"strategy": "fedavg"}, ["fedavg", "FedAvg"]),
    ({"aggregation": "trimmed"}, ["aggregation", "trimmed"]),
    ({"out-dir": "runs/x"}, ["out-dir", "runs/x"]),
    ({"dropout-rate": 1.0}, ["dropout-rate", "1.0"]),
    ({"byzantine-clients": 11}, ["byzantine-clients", "11"]),
    ({"byzantine-mode": "flip"}, ["flip"]),
    ({"fail-clients": "a,b"}, ["fail-clients", "a,b"]),
    ({"fail-clients": "12"}, ["fail-clients", "12"]),
    ({"attack-every": -1}, ["attack-every", "-1"]),
    ({"attacker": "smart"}, ["attacker", "smart"]),
    ({"attack-patience": 0}, ["attack-patience", "0"]),
    ({"leak-threshold": 0}, ["leak-threshold", "0"]),
    ({"seed": True}, ["seed", "True"]),
    ({"slow-clients": "x"}, ["slow-clients", "x"]),
    ({"slow-clients": "12"}, ["slow-clients", "12"]),
    ({"slow-seconds": -1.0}, ["slow-seconds", "-1.0"]),
    ({"resume": "yes"}, ["resume", "true or false", "yes"]),
    ({"dataset": "folder:data/x"}, ["dataset", "folder:data/x", "absolute"]),
    ({"dataset": "folders:/abs"}, ["folders:/abs", "folder:/ABS/DIR"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_config_is_rejected_naming_key_and_value(overrides, words):
    with pytest.raises(ConfigError) as err:
        parse_run_config(overrides)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_out_dir_required_when_asked():
    with pytest.raises(ConfigError, match="out-dir"):
        parse_run_config({}, require_out_dir=True)
