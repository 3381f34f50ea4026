"""Client-side gradient defenses: one module per defense, one registry, one grammar.

Each defense is a pure, seeded function from a client's upload payload to the defended
payload (:mod:`fl_defense.defenses.base`); it never modifies its input and always returns
new arrays.  The registry (:data:`DEFENSES`) holds every defense's entry: its function,
the strengths it accepts, its aware attacker's objective, its default sweep grid and how
its axis reads; help texts, config checks, the sweep and the training grid derive from it.
The grammar ``NAME[:VALUE[,FLAG...]]`` and :func:`apply_defense` are in
:mod:`fl_defense.defenses.spec`.

Built-in defenses: ``none``, ``masking`` and ``masking-bn`` (:mod:`.masking`),
``clipping`` (:mod:`.clipping`), ``pruning`` (:mod:`.pruning`), ``noising`` and
``noising-laplace`` (:mod:`.noising`), ``dp-gaussian`` (:mod:`.dp_gaussian`),
``quantisation`` (:mod:`.quantisation`) and ``soteria`` (:mod:`.soteria`).

API
---
``DefenseSpec(name, value, flags, clip)``; ``parse_defense(text, clip=None) -> DefenseSpec``;
``apply_defense(spec, payload, kinds, rng, context=None) -> list[np.ndarray]``;
``defense_rng(seed, client_id, round_) -> np.random.Generator``; ``DEFENSES`` (the
registry, name -> :class:`Defense`); ``get_defense(name) -> Defense``.
"""

from fl_defense.defenses.base import Defense, DefenseContext
from fl_defense.defenses.catalogue import DEFENSES
from fl_defense.defenses.spec import DefenseSpec, apply_defense, defense_rng, get_defense, parse_defense

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseSpec", "apply_defense", "defense_rng",
           "get_defense", "parse_defense"]
