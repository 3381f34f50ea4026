"""The defense registry: every built-in defense, in the order listings show them.

A new defense is one module of this package (its function and its :class:`Defense` entry)
plus one line here; a third-party package registers one through the entry-point group
``fl_defense.defenses`` instead (:mod:`fl_defense.registry`).
"""

from __future__ import annotations

from fl_defense.defenses import clipping, dp_gaussian, masking, noising, none, pruning, quantisation, soteria
from fl_defense.defenses.base import Defense
from fl_defense.registry import Registry

DEFENSES: Registry[Defense] = Registry(
    "defense", Defense,
    (none.DEFENSE, masking.MASKING, masking.MASKING_BN, clipping.DEFENSE, pruning.DEFENSE, noising.NOISING,
     noising.NOISING_LAPLACE, dp_gaussian.DEFENSE, quantisation.DEFENSE, soteria.DEFENSE),
    entry_point_group="fl_defense.defenses", normalise=lambda s: s.strip().lower())
"""name -> :class:`Defense` (built-ins, then plug-ins)."""
