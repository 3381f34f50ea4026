"""Label hypotheses for the N dummies of a multi-step attack, from the last layer's update.

The label counts of a batch follow from the last layer's bias update once the softmax
outputs of the batch are known (:func:`attacks.labels.bias_label_counts`):

    c = P - B d,    d = (b_0 - b_K) / lr,    P = sum of the softmax over every appearance.

For one step (K = 1) ``P`` is the model's output at the global weights, nearly the same for
any input of an untrained network, so a dummy input estimates it well and the counts are
read off in closed form (:meth:`LabelSearch.closed_form`).  After several steps the
softmax has moved towards the labels the client trained on, so ``P`` depends on the labels
(and, for ``B < N``, on which batch held which label): the residual

    r(h) = sum_proxies || (P_proxy(h) - B d) N / A - counts(h) ||^2

of a hypothesis ``h`` (a label for every dummy slot; ``P_proxy(h)`` simulated on proxy
images with the labels ``h``, ``A`` appearances in all) is searched by a beam search over
single-label changes and swaps between batches (:meth:`LabelSearch.search`), and the best
few hypotheses are handed to the attack, which keeps the one its matching loss prefers
(:mod:`attacks.updates`).  Proxies are generic (an all-zero image and uniform noise) until
the attack has reconstructions, which are then the proxies (they converge to the private
images, where the residual of the true labels is zero).

Which classes are present (:meth:`LabelSearch.presence`).  With a large learning rate the
softmax of an untrained network saturates and cycles: at every step it predicts one class
for all inputs, the class the previous step pushed up most, i.e. one of the batch's labels;
over K steps the predicted classes then nearly cancel the labels in the bias update, which
carries little information (measured: for 4 distinct labels in 4 full-batch steps of the
DLG LeNet at lr 0.1 the bias update is near zero on all of them).  The *rows* of the last
layer's weight update do not cancel: row j is ``sum_k (1/B) sum_i (p_ikj - y_ij) h_ik`` with
``h`` the (positive) features, and the features of different images and steps differ.  A
class whose row norm is a large fraction of the largest is present, one with a tiny
fraction is absent (as LLG's rule that label rows stand out, Wainakh et al. 2022, with
norms instead of sums), and classes the global model already predicts at the start (their
rows are large anyway) are undecided.  :meth:`LabelSearch.presence_hypotheses` enumerates
the multisets with every present class, any undecided ones and no absent one (and, for
several batches, their arrangements), which the residual then ranks.  Measured on 64 real
digits (16 clients, the DLG LeNet at lr 0.1): the true labels were among the 4 best ranked
hypotheses for 13/16 clients with 4 full-batch steps of 4 and 15/16 with 2 steps of 2.

A hypothesis is canonical: labels sorted inside each batch of the first epoch (the order
inside a batch does not change the step).
"""

from __future__ import annotations

import itertools
from math import comb
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from attacks.gradients import bias_index, last_linear_weight_index
from attacks.labels import bias_label_counts
from attacks.multistep import Simulator, appearances

CHUNK = 256  # hypotheses simulated per vmapped call
PRESENT = 0.3     # a class whose weight-row norm is at least this fraction of the largest is present
ABSENT = 0.08     # ... below this fraction, absent (in between: undecided)
PREDICTED = 0.05  # a class the global model predicts with this mean probability is undecided
MAX_HYPOTHESES = 4096  # larger presence-constrained spaces fall back to the beam search


def first_epoch_groups(batches: Sequence[np.ndarray], n_images: int) -> np.ndarray:
    """The batch (step index) in which each of the N slots first appears."""
    group = np.full(n_images, -1, dtype=np.int64)
    for k, b in enumerate(batches):
        for s in np.asarray(b).tolist():
            if group[s] < 0:
                group[s] = k
    if (group < 0).any():
        raise ValueError("some dummy slots are never trained on")
    return group


def canonical(labels: Sequence[int], groups: np.ndarray) -> tuple[int, ...]:
    """``labels`` sorted inside each first-epoch batch."""
    h = np.asarray(labels, dtype=np.int64).copy()
    for g in np.unique(groups):
        m = groups == g
        h[m] = np.sort(h[m])
    return tuple(int(v) for v in h)


def arrangements(labels: Sequence[int], groups: np.ndarray, limit: int) -> list[tuple[int, ...]] | None:
    """The distinct arrangements of the multiset ``labels`` into the first-epoch batches
    ``groups`` (slot -> batch), each in :func:`canonical` form, in no set order; ``None``
    when there are more than ``limit``.  The same set as ``{canonical(p, groups) for p in
    permutations(labels)}``, built batch by batch from sub-multisets of the labels left, so
    its cost follows the number of arrangements, not the number of permutations."""
    classes = sorted(set(int(v) for v in labels))
    left = [sum(1 for v in labels if int(v) == c) for c in classes]
    slots = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    if sum(len(s) for s in slots) != len(labels):
        raise ValueError(f"{len(labels)} labels for {sum(len(s) for s in slots)} slots")
    out: list[tuple[int, ...]] = []
    h = np.zeros(len(labels), dtype=np.int64)

    def picks(i: int, size: int):  # sub-multisets of size `size` from classes i.., as counts per class
        if i == len(classes):
            if size == 0:
                yield []
            return
        for take in range(min(left[i], size), -1, -1):
            for rest in picks(i + 1, size - take):
                yield [take, *rest]

    def place(g: int) -> bool:  # False once more than `limit` are found
        if g == len(slots):
            out.append(tuple(int(v) for v in h))
            return len(out) <= limit
        for pick in list(picks(0, len(slots[g]))):  # a list: `left` changes below
            h[slots[g]] = np.repeat(classes, pick)
            for i, take in enumerate(pick):
                left[i] -= take
            ok = place(g + 1)
            for i, take in enumerate(pick):
                left[i] += take
            if not ok:
                return False
        return True

    return out if place(0) else None


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """The multiset of labels with ``counts[c]`` copies of class c, sorted."""
    return np.repeat(np.arange(len(counts)), counts)


class LabelSearch:
    """Label hypotheses of one shape of target (N dummies, K steps of B).

    Args:
        sim: the :class:`attacks.multistep.Simulator` of the shape (hard labels).
        bias_index: position, among the trainable parameters, of the last layer's bias.
        weight_index: ... of its weight (default: the parameter before the bias).
        num_classes: number of classes.
    """

    def __init__(self, sim: Simulator, bias_index: int, n_images: int, num_classes: int,
                 weight_index: int | None = None) -> None:
        self.sim, self.bias_index, self.num_classes = sim, bias_index, num_classes
        self.weight_index = bias_index - 1 if weight_index is None else weight_index
        self.n_images = n_images
        batches = [b.numpy() for b in sim.batches]
        self.size = len(batches[0])
        self.appear = int(appearances(batches, n_images).sum())
        self.groups = first_epoch_groups(batches, n_images)
        self.several_batches = len(np.unique(self.groups)) > 1
        self._vprobs = vmap(self._probs, in_dims=(None, None, 0), randomness="different")

    def _probs(self, p0: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.sim.run(p0, x, y, stats=False, probs=True)[2]

    def closed_form(self, p0: dict[str, Tensor], bias_pg: Tensor, proxy: Tensor) -> np.ndarray:
        """Counts from the softmax of ``proxy`` ``[N, C, H, W]`` at the global weights (exact
        for one step when the softmax does not depend on the input), as sorted labels."""
        with torch.no_grad():
            out = functional_call(self.sim.model, p0, (proxy,))
            prob = torch.softmax(out, -1).mean(0).double().cpu().numpy()
        counts, _ = bias_label_counts(bias_pg.double().cpu().numpy(), prob * self.appear, self.size,
                                      self.appear, self.n_images)
        return labels_from_counts(counts)

    def residuals(self, p0: dict[str, Tensor], bias_pg: Tensor, proxies: Sequence[Tensor],
                  hyps: Sequence[tuple[int, ...]]) -> np.ndarray:
        """:math:`r(h)` (module docstring) of every hypothesis, summed over the proxies."""
        y = torch.tensor(hyps, dtype=torch.long, device=bias_pg.device)
        counts = torch.stack([torch.bincount(h, minlength=self.num_classes) for h in y]).double()
        d = bias_pg.double()
        total = torch.zeros(len(hyps), dtype=torch.float64, device=bias_pg.device)
        with torch.no_grad():
            for proxy in proxies:
                probs = self._hypothesis_probs(p0, proxy, y)
                real = (probs.double() - self.size * d) * (self.n_images / self.appear)
                total += ((real - counts) ** 2).sum(1)
        return total.cpu().numpy()

    def _hypothesis_probs(self, p0: dict[str, Tensor], proxy: Tensor, y: Tensor) -> Tensor:
        """``P_proxy(h)`` ``[H, classes]`` for every hypothesis of ``y`` ``[H, N]``.  One step
        starts at the global weights, so its softmax does not depend on the labels: simulated
        once and shared; several steps are simulated per hypothesis (vmapped)."""
        if len(self.sim.batches) == 1:
            return self._probs(p0, proxy, y[0]).expand(len(y), -1)
        return torch.cat([self._vprobs(p0, proxy, y[s:s + CHUNK]) for s in range(0, len(y), CHUNK)])

    def presence(self, p0: dict[str, Tensor], weight_pg: Tensor, proxy: Tensor
                 ) -> tuple[list[int], list[int]]:
        """``(present, undecided)`` classes from the norms of the last layer's weight rows
        (module docstring); the others are absent."""
        norms = weight_pg.double().flatten(1).norm(dim=1).cpu().numpy()
        rel = norms / max(float(norms.max()), 1e-30)
        with torch.no_grad():
            prob = torch.softmax(functional_call(self.sim.model, p0, (proxy,)), -1).mean(0).cpu().numpy()
        present = [j for j in range(self.num_classes) if rel[j] >= PRESENT and prob[j] <= PREDICTED]
        undecided = [j for j in range(self.num_classes)
                     if j not in present and (rel[j] >= ABSENT or prob[j] > PREDICTED)]
        return present, undecided

    def presence_hypotheses(self, present: Sequence[int], undecided: Sequence[int]) -> list[tuple[int, ...]] | None:
        """Every hypothesis holding each present class at least once, undecided classes any
        number of times and nothing else (multisets, and their arrangements into the
        first-epoch batches); ``None`` when there are none or more than ``MAX_HYPOTHESES``."""
        n = self.n_images
        present, pool = list(present), list(present) + list(undecided)
        if len(present) > n or not pool:
            return None
        free = n - len(present)
        if comb(len(pool) + free - 1, free) > MAX_HYPOTHESES:
            return None
        out: set[tuple[int, ...]] = set()
        for extra in itertools.combinations_with_replacement(pool, free):
            labels = sorted(present + list(extra))
            if not self.several_batches:
                out.add(tuple(labels))
                continue
            found = arrangements(labels, self.groups, MAX_HYPOTHESES - len(out))
            if found is None:
                return None
            out.update(found)
        return sorted(out)

    def rank(self, p0: dict[str, Tensor], bias_pg: Tensor, proxies: Sequence[Tensor],
             hyps: Sequence[tuple[int, ...]], keep: int) -> list[tuple[tuple[int, ...], float]]:
        """The ``keep`` hypotheses of smallest residual, best first; the residual of a
        hypothesis is its smallest over the proxies (a proxy explains it or not)."""
        res = np.min(np.stack([self.residuals(p0, bias_pg, [p], hyps) for p in proxies]), axis=0)
        order = sorted(range(len(hyps)), key=lambda i: (res[i], hyps[i]))[:keep]
        return [(tuple(hyps[i]), float(res[i])) for i in order]

    def neighbours(self, h: tuple[int, ...], classes: Sequence[int] | None = None) -> set[tuple[int, ...]]:
        """Hypotheses one label change (to any of ``classes``, default all) or one swap
        between two first-epoch batches away from ``h``."""
        classes = range(self.num_classes) if classes is None else classes
        out = set()
        base = list(h)
        if classes:
            for i in range(len(base)):
                for c in classes:
                    if c != base[i]:
                        h2 = base.copy()
                        h2[i] = c
                        out.add(canonical(h2, self.groups))
        if self.several_batches:
            for i in range(len(base)):
                for j in range(i + 1, len(base)):
                    if self.groups[i] != self.groups[j] and base[i] != base[j]:
                        h2 = base.copy()
                        h2[i], h2[j] = base[j], base[i]
                        out.add(canonical(h2, self.groups))
        return out

    def search(self, p0: dict[str, Tensor], bias_pg: Tensor, proxies: Sequence[Tensor],
               starts: Sequence[Sequence[int]], width: int = 4, rounds: int = 6, keep: int = 4,
               swaps_only: bool = False) -> list[tuple[tuple[int, ...], float]]:
        """Beam search of the residual from ``starts``: every round the ``width`` best
        hypotheses so far are expanded by their :meth:`neighbours`; stops when the beam no
        longer changes.  Returns the ``keep`` best hypotheses seen, with their residuals,
        best first.  ``swaps_only`` keeps the multiset of ``starts`` (labels given)."""
        seen: dict[tuple[int, ...], float] = {}

        def evaluate(hs) -> None:
            new = [h for h in hs if h not in seen]
            if new:
                for h, r in zip(new, self.residuals(p0, bias_pg, proxies, new)):
                    seen[h] = float(r)

        beam = sorted({canonical(s, self.groups) for s in starts})
        evaluate(beam)
        beam = sorted(beam, key=lambda h: (seen[h], h))[:width]
        for _ in range(rounds):
            cand = set(beam)
            for h in beam:
                cand |= self.neighbours(h, () if swaps_only else None)
            evaluate(cand)
            new_beam = sorted(cand, key=lambda h: (seen[h], h))[:width]
            if new_beam == beam:
                break
            beam = new_beam
        best = sorted(seen, key=lambda h: (seen[h], h))[:keep]
        return [(h, seen[h]) for h in best]


# ---------------------------------------------------------------- per target, for attacks.updates
def generic_proxies(n: int, input_shape, seed: int, device) -> list[Tensor]:
    """Proxy inputs for the label estimate: a black image and uniform noise (seeded)."""
    gen = torch.Generator().manual_seed(int(seed) & 0xFFFFFFFF)
    return [torch.zeros(n, *input_shape, device=device), torch.rand(n, *input_shape, generator=gen).to(device)]


def searcher_for(g, given: list[np.ndarray] | None) -> LabelSearch | None:
    """The :class:`LabelSearch` of a group of targets of one shape (``attacks.updates``'s
    ``_Group``: model, names, simulator, schedule, lr), ``None`` when the labels are given
    and the last layer has no bias."""
    bias = bias_index(g.model, g.names)
    if bias is None:
        if given is None:
            raise ValueError("label inference for a batch needs a bias in the last linear layer; "
                             "give the labels (labels='given')")
        return None
    sim = g.sim if g.config.method != "dlg" else Simulator(g.model, g.names, g.batches, g.lr, soft=False)
    return LabelSearch(sim, bias, g.n, g.num_classes, weight_index=last_linear_weight_index(g.model))


def hypotheses_for(g, search: LabelSearch | None, t: int, given: list[np.ndarray] | None,
                recon: Tensor | None) -> list[tuple[int, ...]]:
    """At most ``hypotheses`` (one step: ``one_step_hypotheses``) label hypotheses (slot
    order) for target ``t``, best first.

    Inferred: the closed-form counts on every proxy and the presence-constrained
    hypotheses (:meth:`LabelSearch.presence_hypotheses`, or a beam search from the closed
    forms when there are too many), ranked by the bias residual.  Given: the arrangements of
    the given labels into the first-epoch batches, ranked the same way.  Proxies: a black
    image and uniform noise, and from the second round on the target's best reconstruction.
    """
    opt = g.options
    keep = opt.hypotheses if g.k > 1 else opt.one_step_hypotheses
    if search is None:
        return [tuple(int(v) for v in np.sort(given[t]))]
    p0 = g.params if g.shared else {n_: v[t] for n_, v in g.params.items()}
    bias_pg = g.obs[search.bias_index][t]
    proxies = generic_proxies(g.n, g.input_shape, g.config.seed + t, g.device)
    if recon is not None:
        proxies.append(recon)
    if given is not None:
        labels = tuple(int(v) for v in np.sort(given[t]))
        if not search.several_batches:
            return [labels]
        hyps = search.presence_hypotheses(labels, [])
        if hyps is None:
            found = search.search(p0, bias_pg, proxies, [labels], width=opt.beam_width,
                                  keep=keep, swaps_only=True)
            return [h for h, _ in found]
        hyps = [h for h in hyps if sorted(h) == list(labels)]
        return [h for h, _ in search.rank(p0, bias_pg, proxies, hyps, keep)]
    closed = list(dict.fromkeys(canonical(search.closed_form(p0, bias_pg, p), search.groups) for p in proxies))
    present, undecided = search.presence(p0, g.obs[search.weight_index][t], proxies[0])
    hyps = search.presence_hypotheses(present, undecided)
    if hyps is None:
        found = search.search(p0, bias_pg, proxies, closed, width=opt.beam_width, keep=keep)
    else:
        found = search.rank(p0, bias_pg, proxies, sorted(set(hyps) | set(closed)), keep)
    if g.k == 1:  # one step: the residual is near exact (UpdateAttackOptions.one_step_ratio)
        found = [(h, r) for h, r in found if r <= opt.one_step_ratio * found[0][1] + 1e-12]
    return [h for h, _ in found]
