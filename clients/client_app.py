"""Flower ``ClientApp`` entry point: one :class:`clients.numpy_client.DefendedClient` per SuperNode."""

from __future__ import annotations

from flwr.app import Context
from flwr.clientapp import ClientApp

from clients.numpy_client import DefendedClient
from fl_defense.config import ConfigError, parse_run_config


def client_fn(context: Context):
    cfg = parse_run_config(context.run_config)
    client_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if num_partitions != cfg.num_clients:
        raise ConfigError(f"num-clients is {cfg.num_clients} but the federation has "
                          f"{num_partitions} SuperNodes; set num-supernodes={cfg.num_clients}")
    return DefendedClient(cfg, client_id).to_client()


app = ClientApp(client_fn=client_fn)
