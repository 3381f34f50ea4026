"""Tests of the benchmark scripts' helpers and of a tiny run of each."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from benchmarks import bench_attack, bench_federation


def test_bench_attack_engine_specs():
    assert bench_attack.parse_engine("batched") == ("batched", {})
    assert bench_attack.parse_engine("batched:vmap") == ("batched", {"grad_impl": "vmap"})
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        bench_attack.parse_engine("fast")
    with pytest.raises(ValueError, match="unknown grad_impl 'jit'"):
        bench_attack.parse_engine("loop:jit")


def test_bench_attack_bad_arguments_exit_2(capsys):
    assert bench_attack.main(["--kinds", "mnst"]) == 2
    assert "unknown kind 'mnst'" in capsys.readouterr().err
    assert bench_attack.main(["--threads", "0"]) == 2


def test_bench_attack_tiny_run_prints_the_ratio_table(capsys):
    before = torch.get_num_threads()
    try:
        assert bench_attack.main(["--kinds", "faces", "--n", "2", "--max-iter", "5", "--restarts", "0",
                                  "--threads", "1", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "device=cpu" in out
    assert "## 2 faces (1, 32, 32), threads=1" in out
    assert "# ratio batched / loop" in out
    row = [line for line in out.splitlines() if line.startswith("faces ")]
    assert len(row) == 1 and row[0].split()[1] == "1x32x32"


def test_bench_federation_sizes_and_sampling():
    assert bench_federation.parse_sizes("10:1.0, 100:0.1,1000:0.01") == [(10, 1.0), (100, 0.1),
                                                                         (1000, 0.01)]
    with pytest.raises(ValueError, match="'10:2'"):
        bench_federation.parse_sizes("10:2")
    with pytest.raises(ValueError, match="'ten'"):
        bench_federation.parse_sizes("ten")
    assert [bench_federation.num_fit_clients(n, f) for n, f in ((10, 1.0), (100, 0.1), (1000, 0.01),
                                                                (5, 0.01))] == [10, 10, 10, 1]
    a = bench_federation.sample_clients(0, 3, 1000, 0.01)
    assert a == bench_federation.sample_clients(0, 3, 1000, 0.01)          # same seed: same clients
    assert len(a) == len(set(a)) == 10 and all(0 <= c < 1000 for c in a) and a == sorted(a)
    assert a != bench_federation.sample_clients(0, 4, 1000, 0.01)          # another round
    assert a != bench_federation.sample_clients(1, 3, 1000, 0.01)          # another seed
    assert bench_federation.sample_clients(0, 1, 10, 1.0) == list(range(10))


def test_bench_federation_polling_values():
    assert bench_federation.parse_polls(None) == [None]
    assert bench_federation.parse_polls("off, 0.005") == ["off", "0.005"]
    with pytest.raises(ValueError, match="--flower-poll item 'soon': FL_DEFENSE_FLOWER_POLL='soon'"):
        bench_federation.parse_polls("off,soon")
    assert bench_federation.main(["--flower-poll", "0"]) == 2


def test_bench_federation_repeats_give_the_median_of_paired_ratios():
    def run(clients, poll, repeat, plain, flower):
        return {"clients": clients, "fraction": 1.0, "sampled": clients, "poll": poll, "repeat": repeat,
                "plain": {"seconds": [9.0, plain, plain], "accuracy": [0.5, 0.6]},
                "flower": {"seconds": [9.0, flower, flower], "accuracy": [0.5, 0.7]}}

    rows = [run(10, None, 1, 0.1, 0.2), run(10, "off", 1, 0.1, 0.3),
            run(10, None, 2, 0.2, 0.2), run(10, "off", 2, 0.2, 0.5),
            run(10, None, 3, 0.1, 0.15), run(10, "off", 3, 0.1, 0.4)]
    by_poll = {r["poll"]: r for r in bench_federation.summarise(rows)}
    assert set(by_poll) == {None, "off"}
    r = by_poll[None]
    assert r["repeats"] == 3 and r["ratios"] == pytest.approx([2.0, 1.0, 1.5])
    assert r["ratio"] == pytest.approx(1.5)                       # the median ratio, not a ratio of medians
    assert r["plain_s_per_round"] == pytest.approx(0.1) and r["flower_s_per_round"] == pytest.approx(0.2)
    assert by_poll["off"]["ratios"] == pytest.approx([3.0, 2.5, 4.0]) and by_poll["off"]["ratio"] == pytest.approx(3.0)
    assert (r["plain_accuracy"], r["flower_accuracy"]) == (0.6, 0.7)
    assert bench_federation.main(["--repeats", "0"]) == 2


def test_bench_federation_runs_as_a_module_without_path_edits():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(bench_federation.__file__).resolve().parent.parent
    assert "sys.path" not in Path(bench_federation.__file__).read_text()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_federation", "--rounds", "1"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--rounds must be >= 2" in proc.stderr, proc.stderr


def test_bench_federation_process_helpers():
    assert bench_federation.classify("ray::ClientAppActor.run") == "client"
    assert bench_federation.classify("/usr/bin/python3 /x/bin/flwr-simulation --app /a") == "server"
    assert bench_federation.classify("/x/bin/flower-superlink --insecure") == "other"
    hwm = bench_federation.read_hwm()
    assert hwm is None or hwm > 10 * 2**20
    assert bench_federation.read_hwm(2**31) is None
    assert bench_federation.steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert bench_federation.main(["--sizes", "0:1"]) == 2
    assert bench_federation.main(["--rounds", "1"]) == 2


@pytest.mark.slow
def test_bench_federation_plain_reference_trains_like_flower_clients(tmp_path):
    """The plain reference (its own process) runs two rounds of 4 clients and reports its
    round times, accuracy and peak memory."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs Linux /proc")
    out = bench_federation.run_plain(4, 0.5, 2, 0, threads=1)
    assert len(out["seconds"]) == len(out["accuracy"]) == 2
    assert all(s > 0 for s in out["seconds"]) and 0 <= out["accuracy"][-1] <= 1
    assert out["threads"] == 1 and out["peak_rss"] > 50 * 2**20


def test_bench_multistep_tiny_run_prints_a_ratio_per_thread_count(capsys):
    from benchmarks import bench_multistep

    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exc:
            bench_multistep.main(["--threads", "0"])
        assert exc.value.code == 2
        assert bench_multistep.main(["--clients", "2", "--batch-size", "2", "--local-steps", "2",
                                     "--images-per-client", "2", "--model", "lenet", "--lr", "0.1",
                                     "--max-iter", "5", "--threads", "1,2"]) == 0
        out = capsys.readouterr().out
        assert "im2col simulation" in out
        assert [line.split(":")[0] for line in out.splitlines()[-2:]] == ["1 thread(s)", "2 thread(s)"]
        with pytest.raises(SystemExit) as exc:
            bench_multistep.main(["--clients", "2", "--baseline-clients", "3"])
        assert exc.value.code == 2
        # a sampled baseline: one client of two one at a time, both compared on its images
        assert bench_multistep.main(["--clients", "2", "--batch-size", "2", "--local-steps", "2",
                                     "--images-per-client", "2", "--model", "lenet", "--lr", "0.1",
                                     "--max-iter", "5", "--baseline-clients", "1"]) == 0
        out = capsys.readouterr().out
        assert "one at a time: 2 images in" in out and "vectorised: 4 images in" in out
        assert re.search(r"of the 2 images both attacked; the first 1 of 2 clients one at a time\)$",
                         out.splitlines()[-1])
        assert bench_multistep.main(["--clients", "2", "--batch-size", "2", "--local-steps", "2",
                                     "--images-per-client", "2", "--model", "lenet", "--eval-cost"]) == 0
        out = capsys.readouterr().out
        costs = [line for line in out.splitlines() if line.startswith("evaluation, ")]
        assert [c.split(":")[0].split()[-1] for c in costs] == ["im2col", "torch.func"]
        # the gain line: the cheapest one-client cost over the cheapest per-client cost together
        one = [float(re.search(r"([\d.]+) ms for one client", c).group(1)) for c in costs]
        each = [float(re.search(r"\(([\d.]+) ms each\)", c).group(1)) for c in costs]
        gain = re.search(r"batching gain per evaluation: ([\d.]+)x", out)
        assert gain and float(gain.group(1)) == pytest.approx(min(one) / min(each), rel=0.1, abs=0.06)
        assert bench_multistep.main(["--clients", "1", "--batch-size", "2", "--local-steps", "2",
                                     "--images-per-client", "2", "--model", "lenet", "--max-iter", "5",
                                     "--phases"]) == 0
        out = capsys.readouterr().out
        assert "runner call(s)" in out and "budget     5" in out and "rows per evaluation:" in out
    finally:
        torch.set_num_threads(before)


def test_vs_breaching_lays_out_what_breachings_user_can_express_and_refuses_the_rest(capsys):
    from benchmarks import vs_breaching

    one_epoch = [np.array([2, 0]), np.array([3, 1])]
    assert vs_breaching.breaching_layout(one_epoch, 4).tolist() == [2, 0, 3, 1]
    full = [np.array([1, 0, 2]), np.array([2, 1, 0])]
    assert vs_breaching.breaching_layout(full, 3).tolist() == [1, 0, 2]
    assert vs_breaching.breaching_layout([np.array([0, 1]), np.array([2, 3]), np.array([1, 0])], 4) is None
    with pytest.raises(SystemExit) as exc:
        vs_breaching.main(["--local-steps", "2"])  # the multi-step user needs every step's labels
    assert exc.value.code == 2 and "--labels given" in capsys.readouterr().err
    try:
        import breaching  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as exc:
            vs_breaching.main(["--clients", "1"])
        assert exc.value.code == 2 and "breaching is not installed" in capsys.readouterr().err


def test_null_floor_prints_both_criteria_and_writes_its_table(tmp_path, capsys):
    """A small null floor: every null row printed with both criteria; a copy of public data
    is never identified, the paper's criterion counts most of them."""
    import csv

    from benchmarks import null_floor

    assert null_floor.main(["--kinds", "digits", "--n", "12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(null in out for null in null_floor.NULLS) and "paper criterion" in out
    rows = {r["null"]: r for r in csv.DictReader((tmp_path / "null_floor.csv").read_text().splitlines())}
    assert rows["best public image"]["identification_leaked"] == "0"
    assert int(rows["best public image"]["paper_leaked"]) >= 10
    assert null_floor.main(["--kinds", "letters"]) == 2


def test_leak_map_leaves_out_cells_above_max_n_and_resumes_from_its_cells(tmp_path, capsys):
    from benchmarks import leak_map

    before = torch.get_num_threads()
    args = ["--kinds", "digits", "--batch-sizes", "1,2", "--local-steps", "1,2", "--n", "2", "--max-n", "2",
            "--set", "attack-max-iter=10", "--set", "decoy-pool-size=20", "--out", str(tmp_path)]
    try:
        bad = [("0" if a == "2" and args[i - 1] == "--max-n" else a) for i, a in enumerate(args[:-1])]
        assert leak_map.main([*bad, str(tmp_path / "bad")]) == 2
        assert "--max-n" in capsys.readouterr().err and not (tmp_path / "bad").exists()
        assert leak_map.main(args) == 0
        cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
        assert cells == ["digits-B1-K1.json", "digits-B1-K2.json", "digits-B2-K1.json"]   # N = 4 left out
        assert len((tmp_path / "leak_map.csv").read_text().splitlines()) == 4   # a header and 3 cells
        (tmp_path / "cells" / "digits-B1-K1.json").write_text(
            (tmp_path / "cells" / "digits-B1-K1.json").read_text().replace('"clients": 2', '"clients": 7'))
        assert leak_map.main(args) == 0   # a finished cell is read back, not attacked again
        import json
        rows = json.loads((tmp_path / "leak_map.json").read_text())["rows"]
        assert [r["clients"] for r in rows if (r["B"], r["K"]) == (1, 1)] == [7]
        # faces: 60 evaluation images, so a cell of N = 64 is left out, said, and listed
        faces = ["--kinds", "faces", "--local-steps", "1", "--n", "1", "--set", "attack-max-iter=5"]
        assert leak_map.main([*faces, "--batch-sizes", "64", "--out", str(tmp_path / "none")]) == 2
        assert "no cell to run" in capsys.readouterr().err and not (tmp_path / "none").exists()
        assert leak_map.main([*faces, "--batch-sizes", "1,64", "--out", str(tmp_path / "faces")]) == 0
        assert "left out" in capsys.readouterr().out
        data = json.loads((tmp_path / "faces" / "leak_map.json").read_text())
        assert [(r["B"], r["K"]) for r in data["rows"]] == [(1, 1)] and data["left_out"] == [
            {"kind": "faces", "B": 64, "K": 1, "N": 64, "evaluation_images": 60}]
    finally:
        torch.set_num_threads(before)


def test_attack_choices_scores_each_variant_on_the_tuning_split_and_resumes(tmp_path, capsys):
    import json

    from benchmarks import attack_choices

    before = torch.get_num_threads()
    base = ["--kind", "digits", "--batch-size", "1", "--n", "2", "--set", "attack-max-iter=10",
            "--set", "decoy-pool-size=20"]
    try:
        for bad in (["--variant", "Bad Name=attack-tv=0"], ["--variant", "a=attack-tv=-1"],
                    ["--variant", "a=attack-tv=0", "--variant", "a=attack-tv=0.1"], ["--kind", "letters"]):
            assert attack_choices.main([*base, *bad, "--out", str(tmp_path / "bad")]) == 2
            assert "error:" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
        args = [*base, "--variant", "base=", "--variant", "tv-0=attack-tv=0", "--out", str(tmp_path)]
        assert attack_choices.main(args) == 0
        rows = json.loads((tmp_path / "attack_choices.json").read_text())["rows"]
        assert [(r["variant"], r["keys"], r["split"], r["n"]) for r in rows] == [
            ("base", {}, "tuning", 2), ("tv-0", {"attack-tv": 0}, "tuning", 2)]
        assert [r["attack_tv"] for r in rows] == [1e-3, 0.0]
        assert all(sum(c["images"] for c in r["by_label"]) == 2 for r in rows)
        assert all(sum(c["leaked"] for c in r["by_label"]) == r["leaked"] for r in rows)
        cached = tmp_path / "variants" / "tv-0.json"
        cached.write_text(cached.read_text().replace('"clients": 2', '"clients": 9'))
        assert attack_choices.main(args) == 0   # a finished variant is read back, not attacked again
        rows = json.loads((tmp_path / "attack_choices.json").read_text())["rows"]
        assert [r["clients"] for r in rows] == [2, 9]
    finally:
        torch.set_num_threads(before)


def test_main_job_worker_counts_and_bad_arguments_exit_2(tmp_path, capsys):
    from benchmarks import main_job

    assert main_job.worker_counts("1,0,2") == [1, 0, 2]
    for bad in ("1,,2", "x", "1,1", "-1", "65"):
        with pytest.raises(ValueError, match="--workers"):
            main_job.worker_counts(bad)
        assert main_job.main(["--out", str(tmp_path / "out"), "--workers", bad]) == 2
        assert "--workers" in capsys.readouterr().err
    assert main_job.main(["--out", str(tmp_path / "out"), "--copies", "1"]) == 2
    assert not (tmp_path / "out").exists()


def test_label_spread_labellings_and_bad_arguments_exit_2(tmp_path, capsys):
    from benchmarks import label_spread

    assert label_spread.parse_labellings("real,distinct-10,shared-2") == ["real", "distinct-10", "shared-2"]
    for bad in ("distinct-1", "shared", "real,real", "fake-3", "distinct-x"):
        with pytest.raises(ValueError, match="--labels"):
            label_spread.parse_labellings(bad)
        assert label_spread.main(["--labels", bad, "--out", str(tmp_path / "bad")]) == 2
        assert "--labels" in capsys.readouterr().err
    assert label_spread.main(["--kind", "letters", "--out", str(tmp_path / "bad")]) == 2
    assert label_spread.main(["--kind", "faces", "--n", "61", "--out", str(tmp_path / "bad")]) == 2
    assert "--n must be in [1, 60]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    real = np.array([5, 5, 1, 1, 1, 0, 3], dtype=np.int64)
    assert label_spread.relabelling("real", 2) is None
    labels, classes = label_spread.relabelling("distinct-3", 2)(real)
    assert classes == 3 and labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    labels, classes = label_spread.relabelling("shared-3", 2)(real)
    assert classes == 3 and labels.tolist() == [0, 0, 1, 1, 2, 2, 0]


def test_label_spread_singular_values_are_those_of_the_explicit_jacobian():
    import torch.nn.functional as F
    from torch import nn

    from benchmarks import label_spread

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = np.random.default_rng(0).random((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    sv = label_spread.jacobian_singular_values(model, x, y)
    params = {n: p.detach().double().requires_grad_(True) for n, p in model.named_parameters()}
    model64 = model.double()

    def pseudo(flat):
        out = torch.func.functional_call(model64, params, (flat.reshape(x.shape),))
        g = torch.autograd.grad(F.cross_entropy(out, torch.as_tensor(y)), list(params.values()), create_graph=True)
        return torch.cat([v.flatten() for v in g])

    jac = torch.autograd.functional.jacobian(pseudo, torch.as_tensor(x, dtype=torch.float64).flatten())
    assert sv.shape == (72,) and np.all(np.diff(sv) <= 0)
    np.testing.assert_allclose(sv, torch.linalg.svdvals(jac).numpy(), atol=1e-6)


def test_label_spread_attacks_each_labelling_counts_by_the_real_labels_and_resumes(tmp_path):
    import json

    from benchmarks import label_spread

    before = torch.get_num_threads()
    args = ["--kind", "digits", "--batch-size", "2", "--n", "2", "--labels", "real,shared-10",
            "--set", "attack-max-iter=10", "--set", "decoy-pool-size=20", "--out", str(tmp_path)]
    try:
        assert label_spread.main(args) == 0
        data = json.loads((tmp_path / "label_spread.json").read_text())
        rows = data["rows"]
        assert data["command"].startswith("python -m benchmarks.label_spread --kind digits")
        assert [(r["labelling"], r["num_classes"], r["n"]) for r in rows] == [("real", 10, 2), ("shared-10", 10, 2)]
        assert rows[1]["first_client_labels"] == [0, 0]
        from experiments.targets import dataset_targets

        assert rows[0]["first_client_labels"] == dataset_targets("mnist-embedded", 2, 0, shuffle=True).labels.tolist()
        # the counts per label are by the data set's labels under every labelling
        assert [[c["label"] for c in r["by_label"]] for r in rows] == [[c["label"] for c in rows[0]["by_label"]]] * 2
        assert all(0 < r["sv_min_ratio"] <= r["sv_median_ratio"] <= 1 and r["sv_count"] == 2 * 28 * 28 for r in rows)
        cached = tmp_path / "labellings" / "shared-10.json"
        cached.write_text(cached.read_text().replace('"clients": 1', '"clients": 9'))
        assert label_spread.main(args) == 0   # a finished labelling is read back, not attacked again
        rows = json.loads((tmp_path / "label_spread.json").read_text())["rows"]
        assert [r["clients"] for r in rows] == [1, 9]
    finally:
        torch.set_num_threads(before)
