"""Known third-party warnings that carry nothing for the user, filtered where they arise.

* Ray's ``FutureWarning`` "Tip: In future versions of Ray, Ray will no longer override
  accelerator visible devices env var if num_gpus=0 ...": every ``ray.init`` on a machine
  without a GPU prints it; setting ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` (the behaviour it
  announces) silences it, and the processes a run starts inherit the variable.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["quiet_third_party", "QUIET_ENV"]

#: Environment variables that silence known warnings in the processes a run starts.
QUIET_ENV = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def quiet_third_party(environ: dict | None = None) -> None:
    """Filter the known warnings in this process, and set :data:`QUIET_ENV` (where not set)
    in ``environ`` (default: this process's environment)."""
    target = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        target.setdefault(key, value)
    warnings.filterwarnings("ignore", message=r"Tip: In future versions of Ray", category=FutureWarning)
