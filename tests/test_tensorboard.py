"""``--tensorboard DIR``: the per-round numbers and the hook's reconstruction figure, read back
from the event file with TensorBoard's own reader."""

import numpy as np
from PIL import Image


def test_tensorboard_logger_writes_scalars_and_the_round_figure(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from experiments.cli import tensorboard_logger

    out = tmp_path / "run"
    (out / "attack").mkdir(parents=True)
    figure = np.zeros((12, 20, 3), np.uint8)
    figure[:, :10, 0] = 255
    Image.fromarray(figure).save(out / "attack" / "round-002.png")
    board = tmp_path / "board"
    log = tensorboard_logger(str(board), out)
    log({"round": 1, "accuracy": 0.25, "loss": 2.0, "attack_images": 4, "attack_leaked": 1, "attack_leaked_paper": 4,
         "defense": "none", "attack_ok": True})
    log({"round": 2, "accuracy": 0.5, "loss": 1.5, "attack_images": 4, "attack_leaked": 3, "attack_leaked_paper": 4})
    log(None)

    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(1, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("attack/leaked_rate")] == [(1, 0.25), (2, 0.75)]
    assert [e.value for e in events.Scalars("attack/leaked_paper_rate")] == [1.0, 1.0]
    assert "defense" not in tags["scalars"] and "attack_ok" not in tags["scalars"]  # text and flags are not scalars
    images = events.Images("attack/reconstructions")
    assert [(i.step, i.width, i.height) for i in images] == [(2, 20, 12)]  # only the round that has a figure
