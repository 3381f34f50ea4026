#!/usr/bin/env python
"""fl-defense launcher.

    python run_sim.py [run]   [--out DIR] [--rounds N] [--clients N] [--defense NAME[:VALUE]]
                              [--aggregation mean|median] [--strategy NAME]
                              [--partition iid|dirichlet:ALPHA|pathological:K] [--dataset NAME]
                              [--set KEY=VALUE ...]
    python run_sim.py attack  (--dataset NAME | --images DIR) --defense NAME[:VALUE] --n N --out DIR
    python run_sim.py sweep   ...   (experiment 1: minimum defense thresholds)
    python run_sim.py train   ...   (experiment 2: the privacy-utility training grid)

``run`` runs one experiment through Flower's simulation engine (``flwr run`` on Ray),
prints a table row per round, and exits non-zero when the run failed.  Every flag maps to
a key of ``[tool.flwr.app.config]`` in pyproject.toml; ``--set KEY=VALUE`` reaches any key.
"""

from __future__ import annotations

import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
