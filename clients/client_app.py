"""Flower ``ClientApp`` entry point: one :class:`clients.numpy_client.DefendedClient` per
SuperNode, behind the mods of :mod:`clients.mods` (SecAgg+, Flower's client-side DP clipping).

Importing this module in the simulation's process shortens the simulation engine's
polling (:func:`fl_defense.flower_engine.shorten_engine_polling`) and makes its actor pool
replace a client actor that died (:func:`fl_defense.flower_engine.replace_dead_actors`):
Flower imports the ClientApp there before its engine starts.  Elsewhere (Ray's workers, a
deployed SuperNode) both calls do nothing."""

from __future__ import annotations

from flwr.app import Context
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp

from clients.mods import secagg_update_mod, when
from clients.numpy_client import DefendedClient
from fl_defense.config import ConfigError, parse_run_config
from fl_defense.flower_engine import replace_dead_actors, shorten_engine_polling

shorten_engine_polling()
replace_dead_actors()


def client_fn(context: Context):
    cfg = parse_run_config(context.run_config)
    client_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    if num_partitions != cfg.num_clients:
        raise ConfigError(f"num-clients is {cfg.num_clients} but the federation has "
                          f"{num_partitions} SuperNodes; set num-supernodes={cfg.num_clients}")
    return DefendedClient(cfg, client_id).to_client()


def _secagg(cfg) -> bool:
    return cfg.secure_aggregation


def _client_side_clipping(cfg) -> bool:
    return cfg.dp_strategy == "client-side-fixed-clipping"


app = ClientApp(client_fn=client_fn, mods=[when(_secagg, secaggplus_mod), when(_secagg, secagg_update_mod),
                                           when(_client_side_clipping, fixedclipping_mod)])
