"""The papers behind the ``insensitivity``, ``invariance`` and ``randomisation`` families, and this run's answer.

Each family's report section opens with :func:`opening`: the paper's claim
in one sentence, its citation, and beside it the measured rates from the
run's rows ("here: z+ 100.00 % [90.61, 100.00] of points at depth 8, x:
..."), composed from the rows' keys only.  Torch-free (the report imports it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from ..measure.keys import RateKey
from .summary import format_rate

__all__ = ["Claim", "CLAIMS", "opening", "QUOTED_DEPTH"]

#: the depth whose rates the insensitivity section quotes
QUOTED_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's finding: who, where, and what it says, in one sentence."""

    citation: str
    claim: str


CLAIMS = {
    "insensitivity": Claim(
        "Sixt, Granz & Landgraf, When Explanations Lie: Why Many Modified BP Attributions Fail, ICML 2020",
        "z+ (and alpha-beta) relevance converges with depth to one direction whatever is explained (products of "
        "non-negative matrices converge to rank one), so the explanation barely depends on the class; LRP-0 does not",
    ),
    "invariance": Claim(
        "Kindermans et al., The (Un)reliability of Saliency Methods, 2019",
        "shifting the inputs by a constant, compensated in the first layer's bias, leaves the function unchanged but "
        "changes the explanations of methods that read the input; the w2 rule and zB with shifted bounds stay "
        "invariant",
    ),
    "randomisation": Claim(
        "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (and Sixt et al. 2020, Fig. 1)",
        "an explanation that still looks the same after the model's top layers are re-initialised does not explain the "
        "model; modified-backprop maps such as z+ barely change, gradient x input does",
    ),
}


def _keyed(rows: Iterable[Mapping]) -> list[tuple[RateKey, Mapping]]:
    out = []
    for r in rows:
        try:
            key = RateKey.parse(r["name"])
        except ValueError:
            continue
        out.append((key, r))
    return out


#: rows with their keys, of one family
Keyed = list[tuple[RateKey, Mapping]]


def _listing(pairs: Sequence[tuple[str | None, Mapping]]) -> str:
    return ", ".join(f"{label} {format_rate(r)}" for label, r in pairs)


def _insensitivity(keyed: Keyed) -> list[str]:
    parts = []
    generated = [(k, r) for k, r in keyed if k.subject is None and k.pair == "outputs"]
    depth = (
        QUOTED_DEPTH
        if any(k.depth == QUOTED_DEPTH for k, _ in generated)
        else max((k.depth for k, _ in generated if k.depth is not None), default=None)
    )
    if depth is not None:
        pairs = [(k.rule, r) for k, r in generated if k.depth == depth]
        parts.append("insensitive points (two explained outputs, cosine "
                     f">= 0.99) at depth {depth} of generated networks: "
                     + _listing(pairs))
    simulated = [(k.subset, r) for k, r in keyed if k.subject == "vgg16_simulation"]
    if simulated:
        parts.append("the simulation's column pairs after all VGG-16 shapes: " + _listing(simulated))
    for subject in sorted({k.subject for k, _ in keyed if k.subject not in (None, "vgg16_simulation")}):
        pairs = [(k.rule, r) for k, r in keyed if k.subject == subject and k.pair == "outputs"]
        if pairs:
            parts.append(f"subject {subject}, predicted class vs runner-up: " + _listing(pairs))
    return parts


def _invariance(keyed: Keyed) -> list[str]:
    parts = []
    generated = [(k.rule, r) for k, r in keyed if k.subject is None]
    if generated:
        parts.append("points with unchanged relevance, generated networks: " + _listing(generated))
    for subject in sorted({k.subject for k, _ in keyed if k.subject is not None}):
        parts.append(f"subject {subject}: " + _listing([(k.rule, r) for k, r in keyed if k.subject == subject]))
    return parts


def _randomisation(keyed: Keyed) -> list[str]:
    parts = []
    for subject in sorted({k.subject for k, _ in keyed if k.subject is not None}):
        mine = [(k, r) for k, r in keyed if k.subject == subject and k.outcome == "rank_similar"]
        top = max((k.randomised for k, _ in mine if k.randomised is not None), default=None)
        if top is not None:
            parts.append(f"subject {subject}, all {top} parameterised layers re-initialised, points still rank-similar "
                         "(Spearman >= 0.9): " + _listing([(k.rule, r) for k, r in mine if k.randomised == top]))
    return parts


_ANSWERS = {"insensitivity": _insensitivity, "invariance": _invariance, "randomisation": _randomisation}


def opening(family: str, rows: Iterable[Mapping]) -> str | None:
    """The section's first paragraph: claim, citation, and the run's answer beside it; None for other families."""
    claim = CLAIMS.get(family)
    if claim is None:
        return None
    keyed = [(k, r) for k, r in _keyed(rows) if k.family == family]
    answer = "; ".join(_ANSWERS[family](keyed)) or "not measured in this run"
    return f"{claim.citation}: {claim.claim}. Here: {answer}."
