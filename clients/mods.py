"""The client mods of a run, switched by its config.

A ``ClientApp``'s mods are fixed when the app is built, before any run config is known;
:func:`when` wraps a mod so that it acts only in runs whose config asks for it (and passes
every message straight through otherwise).  The ClientApp's chain, outermost first:

1. ``secaggplus_mod`` (``secure-aggregation``): the SecAgg+ protocol; in its
   collect-masked-vectors stage it calls the rest of the chain for the fit result, then
   masks and quantises it;
2. :func:`secagg_update_mod` (``secure-aggregation``): the fit result's parameters become
   the update ``upload - global`` (float64), the scale that SecAgg+ quantises
   (:mod:`strategies.secagg` adds the global back);
3. ``fixedclipping_mod`` (``dp-strategy = client-side-fixed-clipping``): Flower's client half
   of ``DifferentialPrivacyClientSideFixedClipping``, which clips ``upload - global`` to the
   norm the server sends;
4. the ``DefendedClient``.

Results pass back up the chain in the reverse order: the client's upload is clipped (3),
turned into an update (2) and masked (1).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fl_defense.config import ExperimentConfig, parse_run_config


@lru_cache(maxsize=16)
def _parsed(items: tuple) -> ExperimentConfig:
    return parse_run_config(dict(items))


def run_config_of(ctxt: Context) -> ExperimentConfig:
    """The validated config of the run a message belongs to (parsed once per run config)."""
    return _parsed(tuple(sorted(ctxt.run_config.items())))


def when(flag: Callable[[ExperimentConfig], bool], mod: Mod) -> Mod:
    """``mod`` in runs whose config satisfies ``flag``; a pass-through in the others."""
    def switched(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if flag(run_config_of(ctxt)):
            return mod(msg, ctxt, call_next)
        return call_next(msg, ctxt)

    switched.__name__ = f"when_{getattr(mod, '__name__', 'mod')}"
    return switched


def update_of(upload: list[np.ndarray], global_w: list[np.ndarray]) -> list[np.ndarray]:
    """``upload - global`` for every array, in float64."""
    if len(upload) != len(global_w):
        raise ValueError(f"the upload has {len(upload)} arrays, the global model {len(global_w)}")
    return [np.asarray(u, dtype=np.float64) - np.asarray(g, dtype=np.float64) for u, g in zip(upload, global_w)]


def secagg_update_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Replace the parameters of a fit result by the update ``upload - global``."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    global_w = parameters_to_ndarrays(compat.recorddict_to_fitins(msg.content, keep_input=True).parameters)
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    fit_res = compat.recorddict_to_fitres(out.content, keep_input=True)
    fit_res.parameters = ndarrays_to_parameters(update_of(parameters_to_ndarrays(fit_res.parameters), global_w))
    out.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return out
