import numpy as np
import torch

from fl_defense.models import BNCNN, LeNet, build_model, state_kinds
from fl_defense.task import (get_weights, local_batches, make_payload, payload_to_weights,
                             set_weights, train_steps)


def test_state_kinds():
    assert set(state_kinds(LeNet())) == {"weight"}
    kinds = dict(zip(BNCNN().state_dict().keys(), state_kinds(BNCNN())))
    assert kinds["body.1.weight"] == "bn_affine" and kinds["body.1.running_var"] == "bn_stat"
    assert kinds["body.1.num_batches_tracked"] == "bn_stat" and kinds["fc.weight"] == "weight"


def test_lenet_shapes_and_dlg_init():
    assert LeNet(1, 28, 10)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet(3, 32, 5)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    torch.manual_seed(0)
    m = LeNet(dlg_init=True)
    for p in m.parameters():
        assert p.min() >= -0.5 and p.max() <= 0.5 and p.abs().max() > 0.4


def test_payload_roundtrip_and_gradient_identity():
    """For one SGD step, (global - upload) / lr is exactly the gradient."""
    torch.manual_seed(0)
    model = build_model("bncnn", 1, 28, 10)
    kinds = state_kinds(model)
    g = get_weights(model)
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    ref = build_model("bncnn", 1, 28, 10)
    set_weights(ref, g)
    ref.train()
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    train_steps(model, x.numpy(), y.numpy(), [np.arange(4)], lr=0.5, device=torch.device("cpu"))
    local = get_weights(model)
    payload = make_payload(g, local, kinds)
    upload = payload_to_weights(g, payload, kinds)
    for a, b in zip(upload, local):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    names = list(model.state_dict().keys())
    params = dict(zip([n for n, _ in ref.named_parameters()], grads))
    for name, gw, up, kind in zip(names, g, upload, kinds):
        if kind != "bn_stat":
            np.testing.assert_allclose((gw - up) / 0.5, params[name].numpy(), rtol=1e-4, atol=1e-6)
        elif name.endswith("running_var"):
            np.testing.assert_array_equal(up, local[names.index(name)])


def test_local_batches_seeded_and_cover_epochs():
    a = local_batches(100, 10, 32, seed=0, client_id=1, server_round=2)
    b = local_batches(100, 10, 32, seed=0, client_id=1, server_round=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = local_batches(100, 10, 32, seed=0, client_id=1, server_round=3)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    first_epoch = np.concatenate(a)[:96]
    assert len(set(first_epoch.tolist())) == 96
    assert all(len(x) == 32 for x in a)
    assert [len(x) for x in local_batches(5, 3, 32, 0, 0, 1)] == [5, 5, 5]


def test_images_per_round_draws_a_seeded_subset_and_cycles_over_it():
    from fl_defense.task import examples_used

    full = local_batches(100, 3, 4, seed=0, client_id=1, server_round=2)
    assert [b.tolist() for b in full] == [b.tolist() for b in local_batches(100, 3, 4, 0, 1, 2, 0)]
    sub = local_batches(100, 5, 2, seed=0, client_id=1, server_round=2, images_per_round=4)
    used = examples_used(sub)
    assert len(used) == 4 and all(set(b) <= set(used) for b in sub)
    # each epoch over the 4 images uses every one of them once
    assert sorted(np.concatenate(sub[:2]).tolist()) == used.tolist()
    assert examples_used(local_batches(100, 5, 2, 0, 1, 3, 4)).tolist() != used.tolist()
    assert examples_used(local_batches(3, 2, 2, 0, 1, 2, 8)).tolist() == [0, 1, 2]  # N >= partition: all


def test_tanhcnn_shapes_and_kinds():
    import torch

    for side in (25, 28, 32):
        m = build_model("tanhcnn", 3, side, 7)
        assert m(torch.zeros(2, 3, side, side)).shape == (2, 7)
        assert set(state_kinds(m)) == {"weight"}
