"""Flower's own central-DP strategy wrappers, as named by the config key ``dp-strategy``.

* ``client-side-fixed-clipping`` -- :class:`flwr.server.strategy.DifferentialPrivacyClientSideFixedClipping`:
  the server sends the clipping norm C (``dp-clip``) in every ``FitIns``; the client's
  ``fixedclipping_mod`` (``clients/client_app.py``) scales its whole upload difference
  ``upload - global`` (every array) to L2 norm at most C; the server adds Gaussian noise of
  standard deviation ``Z C / n`` (``dp-noise-multiplier`` Z, n the number of sampled
  clients) to the *aggregate*.  The uploads the server receives are clipped, not noised.
* ``server-side-fixed-clipping`` -- :class:`flwr.server.strategy.DifferentialPrivacyServerSideFixedClipping`:
  the clients upload as usual; the server clips each upload difference to C, aggregates,
  and adds the same noise.  The uploads the server receives are neither clipped nor noised.

Both add their noise with NumPy's global generator, unseeded: runs with a DP wrapper are
not bit-reproducible.  Both skip the round (no aggregate) when any client failed.

Where the wrapper sits (``strategies/factory.py``): *inside* the attack hook,
``Hook(DPWrapper(Validating(base)))``.  The hook is the honest-but-curious server's code
that looks at what arrives; it must see each upload as the server receives it, i.e.
before the server-side wrapper clips it (that clipping is the server's own processing,
which a curious server can skip) and, for the client-side wrapper, as the client's
``fixedclipping_mod`` clipped it.  The noise comes after aggregation in both, so no
placement of the hook could see noised individual uploads.
"""

from __future__ import annotations

from flwr.server.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                  DifferentialPrivacyServerSideFixedClipping, Strategy)

from fl_defense.config import ExperimentConfig

WRAPPERS = {"client-side-fixed-clipping": DifferentialPrivacyClientSideFixedClipping,
            "server-side-fixed-clipping": DifferentialPrivacyServerSideFixedClipping}


def sampled_clients(cfg: ExperimentConfig) -> int:
    """The number of clients sampled per round, as Flower's FedAvg computes it."""
    return max(int(cfg.num_clients * cfg.fraction_fit), 1)


def wrap_central_dp(cfg: ExperimentConfig, strategy: Strategy) -> Strategy:
    """``strategy`` inside the DP wrapper named by ``dp-strategy`` (unchanged for ``none``)."""
    if cfg.dp_strategy == "none":
        return strategy
    return WRAPPERS[cfg.dp_strategy](strategy, noise_multiplier=cfg.dp_noise_multiplier,
                                     clipping_norm=cfg.dp_clip, num_sampled_clients=sampled_clients(cfg))
