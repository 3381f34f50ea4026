"""The clients of a process share one model per thread and configuration, and what a client
uploads does not depend on the clients that trained on that model before it."""

from __future__ import annotations

import threading

import numpy as np

from clients import numpy_client
from clients.numpy_client import DefendedClient, client_model
from fl_defense.config import parse_run_config
from fl_defense.task import get_weights, new_model


def test_one_model_per_thread_and_configuration():
    cfg = parse_run_config({"num-clients": 3})
    assert DefendedClient(cfg, 0).model is DefendedClient(cfg, 2).model
    other = parse_run_config({"num-clients": 3, "seed": 1})
    assert DefendedClient(other, 0).model is not DefendedClient(cfg, 0).model
    seen = []
    th = threading.Thread(target=lambda: seen.append(client_model(cfg, None)))
    th.start()
    th.join()
    assert seen[0] is not client_model(cfg, None)


def test_upload_is_that_of_a_fresh_model_whatever_trained_before(monkeypatch):
    cfg = parse_run_config({"num-clients": 3, "model": "bncnn", "defense": "noising:0.01", "local-steps": 3})
    global_w = get_weights(new_model(cfg))
    config = {"server-round": 2}
    shared = DefendedClient(cfg, 0)
    shared.fit(global_w, config)                      # client 0 trains the shared model first
    shared.evaluate(global_w, config)
    after = DefendedClient(cfg, 1)
    assert after.model is shared.model
    reused, n_reused, m_reused = after.fit(global_w, config)
    monkeypatch.setattr(numpy_client, "_models", threading.local())  # a process that built no model yet
    fresh_client = DefendedClient(cfg, 1)
    assert fresh_client.model is not shared.model
    fresh, n_fresh, m_fresh = fresh_client.fit(global_w, config)
    assert n_reused == n_fresh and m_reused["train-loss"] == m_fresh["train-loss"]
    for a, b in zip(reused, fresh):
        np.testing.assert_array_equal(a, b)
