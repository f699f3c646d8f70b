"""Typed names of the reported rates.

A rate is identified by a :class:`RateKey`: which *family* of questions it
belongs to (the report's section), on which subject (network population,
library or implementation), for which rule or root finder, at which layer or
neuron, which outcome, counted over which unit (roots or points) and subset.
``str(key)`` is the dotted name that ``report.json`` and ``baseline.json``
use (the names predate the key, so each family declares its own layout of
the parts); :meth:`RateKey.parse` turns a name back into its key.  The suite
builds keys and reads their fields; nothing else splits names apart.

Descriptions are declared once per outcome (:data:`OUTCOMES`) and per
family, and composed from the key by :func:`describe`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .thresholds import (
    CONSERVED_SHARE,
    INSENSITIVE_COSINE,
    INVARIANT_RTOL,
    PROPERTY_ATOL,
    SIMILAR_SPEARMAN,
    SIMILAR_SSIM,
)

__all__ = ["RateKey", "FAMILIES", "OUTCOMES", "UNITS", "SUBSETS", "FINDERS", "PAIRS", "describe", "check_name",
           "layer_names_label", "LAYER_NAMES_SEPARATOR"]

#: report sections, in reading order
FAMILIES = ("notebook", "generated", "region", "full_backward", "agreement", "subject", "conformance",
            "insensitivity", "invariance", "randomisation")

_ATOL = f"{PROPERTY_ATOL:g}"

#: what each outcome asks, in one line (``f_k``: the network from layer ``k`` to the explained output)
OUTCOMES: dict[str, str] = {
    "zero_output": f"|f_k(root)| <= {_ATOL}: the root sets the explained output to zero",
    "output_unchanged": f"f_k(a) - f_k(root) < {_ATOL}: the output did not drop (the notebook's printed number)",
    "gradient_match": f"max_i |grad f_k(root) - grad f_k(a)| <= {_ATOL}: the root has the input's gradient",
    "region_match": "the root lies in the closure of the input's linear region "
                    "of f_k (hidden ReLUs >= k and the explained output)",
    "in_domain": f"root >= -{_ATOL} in every coordinate",
    "root_exists": "the root exists (closed form: |w.v| > eps or R_j = 0; in-region finders: a root was found)",
    "exists": "the finder found a root of the neuron inside the input's region",
    "region_root_exists": "an exact LP finds a root (root equation, root "
                          ">= 0) in the closure of the input's region of f_k",
    "region_output_root": "the input's region of f_k (closure, inputs >= 0) contains a point with f_k = 0 (exact LP)",
    "output_root": "the input's region of f_k (closure, inputs >= 0) contains a point with f_k = 0 (exact LP)",
    "nearer_than_closed_form": "of pairs with both roots, the in-region root is no "
                               "farther (L1) from the input than the closed-form root",
    "conserved": f"the input relevance sums to f(x) within {100 * CONSERVED_SHARE:g} % of f(x)",
    "resolved": f"the upper decomposition re-applied at the forwarded root is 0: |R_j(root)| <= {_ATOL}",
    "points": "points whose input relevance equals the library's within the stabiliser bound",
    "conditioned": "points whose every relevant denominator exceeds twice the stabiliser (and has a DTD root)",
    "agree_where_conditioned": "conditioned points that agree within the bound",
    # the conformance kit's properties of an implementation (properties.conformance)
    "equals_dtd": "points whose input relevance equals dtd.train_free with the claimed rule within the "
                  "stabiliser bound (points whose relevant denominators exceed twice the stabiliser)",
    "conservation": "points with |sum R - f(x)| <= 1e-6 |f(x)| + the stabiliser bound's sum",
    "positivity": "points whose relevance is >= 0 everywhere (z+ rules, x >= 0, all three populations)",
    "gradient_x_input": "points whose relevance equals gradient x input (LRP-0, "
                        "bias-free networks, denominators above 2 stabilisers)",
    "batch_independent": "points whose relevance is the same in the batch and "
                         "in half of it (other batch mates, reversed order)",
    "no_side_effects": "calls (one per network) after which model parameters/grads/requires_grad, buffers, hooks, "
                       "training flags, grad mode and x are unchanged and a second call returns the same relevance",
    "finite": "points (with zero entries, and an all-zero row) whose relevance is finite",
    "dtype_device": "calls whose result has the input's dtype and device",
    "equals_claim": "points whose input relevance equals the slow reference of the library rule the "
                    "implementation claims (properties.conformance.claims: bias kept, the library's stabiliser)",
    # the field's other findings (properties.findings: insensitivity, invariance, randomisation)
    "insensitive": f"points whose two input relevances (see the pair) have cosine similarity >= {INSENSITIVE_COSINE:g}",
    "unchanged": f"points whose input relevance is unchanged (max |R' - R| <= {INVARIANT_RTOL:g} max "
                 "|R|) when the inputs are shifted by c and the first layer's bias by -W c",
    "rank_similar": "points whose input relevance keeps Spearman rank correlation "
                    f">= {SIMILAR_SPEARMAN:g} with the original model's after the top layers are re-initialised",
    "ssim_similar": f"image points whose input relevance keeps SSIM >= {SIMILAR_SSIM:g} with "
                    "the original model's after the top layers are re-initialised",
}

#: the compared pair of an ``insensitivity`` rate
PAIRS = {
    "outputs": "two different explained outputs of the same point",
    "random": "two random non-negative relevance vectors injected at the top layer",
    "columns": "two columns of the random matrix product (the paper's simulation)",
}

#: what is counted: one root per (point, neuron), or a point when all its considered roots satisfy the outcome
UNITS = {"roots": "per root", "points": "points all of whose considered roots satisfy it"}

#: which roots or where the property is judged
SUBSETS = {
    "all": "every valid root (trivial roots of neurons without relevance included)",
    "relevant": "valid roots of neurons carrying relevance (R_j != 0)",
    "at_root": "judged at the root itself (relu'(0) = 0 on the region's boundary)",
    "midpoint": "judged halfway between root and input (inputs strictly inside their region; must be 100 %)",
    "bias_free": "bias-free networks",
    "bias_negative": "networks with biases <= 0",
    "bias_positive": "networks with a positive bias",
    "nonnegative": "random matrices with i.i.d. uniform [0, 1) entries",
    "gaussian": "random matrices with i.i.d. standard normal entries",
    # the conformance kit's CNN and residual-net populations (properties.generate.architectures)
    "cnn_bias_free": "bias-free CNNs (batch norm, max/average/global pooling)",
    "cnn_bias_negative": "CNNs whose folded shifts are all <= 0",
    "cnn_bias_positive": "CNNs with a positive folded shift",
    "resnet_bias_free": "bias-free residual nets (bare + blocks, batch norm, global pooling)",
    "resnet_bias_negative": "residual nets whose folded shifts are all <= 0",
    "resnet_bias_positive": "residual nets with a positive folded shift",
    # every bias population of one architecture: a conformance property judged on all of them
    # (conformance.{name}.finite.cnn) and the generated sweep over graph networks ({rule}.{outcome}.cnn)
    "cnn": "generated CNNs of every bias population (properties.generate.architectures: conv, batch norm with negative "
           "scales, max / average / global pooling)",
    "resnet": "generated residual nets of every bias population (properties.generate.architectures: bare + blocks, "
              "batch norm, global average pooling)",
}

#: root finders named in keys, per family
FINDERS = {
    "notebook": {"region_roots": "RegionRoots (exact LP, L1)", "sampled_roots": "RegionSamplingRoots(256)",
                 "walk_roots": "MetropolisHastingsRoots(8, 100)"},
    "region": {"sampled": "RegionSamplingRoots(64)"},
    "full_backward": {"z+": "LinearRoots(z+)", "sampled": "RegionSamplingRoots"},
}

#: how a subject's layer names are joined in its config entry (:func:`layer_names_label`)
LAYER_NAMES_SEPARATOR = " | "


def layer_names_label(subject: str) -> str:
    """The config entry under which a subject run records its layers' module names (``"0: 0 Linear | 1: 2 Linear"``)."""
    return f"subject {subject}: layers (model modules)"


#: subjects that are network populations of our own, not a user's: how a key names them
SEED = "seed"

_FIELDS = ("family", "subject", "rule", "finder", "layer", "neuron", "outcome", "unit", "subset", "depth", "randomised",
           "pair")
_WORD = re.compile(r"^[A-Za-z0-9_+\-]+$")
#: the numbered parts of a name: field -> its token's prefix (``depth8``, ``top2``); a subject or
#: rule cannot look like one
_NUMBERED = {"depth": "depth", "randomised": "top"}
_RESERVED = re.compile(r"^(?:depth|top)\d+$")


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it may name a subject or an implementation inside rate names, else a clear error.

    The one name rule of the suite (:class:`RateKey`, :class:`properties.Subject`,
    :class:`properties.Implementation`): a non-empty ``str`` of letters, digits,
    ``_``, ``+`` and ``-``.  Dots would split the rate's name; ``/``, ``|``,
    spaces and markup would break file names, tables and the report.

    Raises
    ------
    TypeError
        ``value`` is not a ``str``.
    ValueError
        It breaks the rule; the message suggests a name that keeps it.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    if not _WORD.match(value):
        suggestion = re.sub(r"[^A-Za-z0-9_+\-]+", "_", value).strip("_") or "my_name"
        raise ValueError(
            f"{what} {value!r} must be a non-empty name of letters, digits, '_', '+' or '-' (no dots: dots separate "
            f"the parts of a rate's name; no spaces, '/', '|' or markup either); e.g. {suggestion!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class RateKey:
    """The identity of one reported rate.

    Attributes
    ----------
    family
        One of :data:`FAMILIES`: the report section.
    outcome
        One of :data:`OUTCOMES`: the question.
    subject
        ``"seed"`` (the study's seed network; implied by family ``notebook``),
        ``None`` for generated networks, a library (``zennit``, ``captum``,
        ``breaks`` for the populations where agreement is known to break)
        or the name of a user's subject or implementation.
    rule
        The rule's label (``"z+"``, ``"gamma0_1"``, ...).
    finder
        The root finder, where the rule alone does not say it (see :data:`FINDERS`).
    layer, neuron
        ``k`` (0 = first Linear) or a hidden neuron of the first layer.
    unit
        ``"roots"`` or ``"points"`` (see :data:`UNITS`); None where the family implies it.
    subset
        See :data:`SUBSETS`.
    depth
        Number of layers of the generated networks (``insensitivity``) or of
        multiplied matrices (the simulation); ``depth{d}`` in the name.
    randomised
        Number of top layers re-initialised (``randomisation``); ``top{n}`` in the name.
    pair
        What two relevances an ``insensitivity`` rate compares (see :data:`PAIRS`).
    """

    family: str
    outcome: str
    subject: str | None = None
    rule: str | None = None
    finder: str | None = None
    layer: int | None = None
    neuron: int | None = None
    unit: str | None = None
    subset: str | None = None
    depth: int | None = None
    randomised: int | None = None
    pair: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown rate family {self.family!r}; known: {FAMILIES}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; known: {sorted(OUTCOMES)}")
        for name in ("subject", "rule", "finder"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _WORD.match(value)):
                raise ValueError(
                    f"{name} {value!r} of a rate key must be a non-empty name of letters, digits, '_', '+' or '-' "
                    "(no dots: dots separate the parts of a rate's name)"
                )
            if value is not None and _RESERVED.match(value):
                raise ValueError(f"{name} {value!r} of a rate key looks like a depth or "
                                 "randomised-layers part (depth<d>, top<n>); rename it")
        for name in ("depth", "randomised"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if self.pair is not None and self.pair not in PAIRS:
            raise ValueError(f"unknown pair {self.pair!r}; known: {sorted(PAIRS)}")
        for name in ("layer", "neuron"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}")
        if self.unit is not None and self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; known: {sorted(UNITS)}")
        if self.subset is not None and self.subset not in SUBSETS:
            raise ValueError(f"unknown subset {self.subset!r}; known: {sorted(SUBSETS)}")
        if self.layer is not None and self.neuron is not None:
            raise ValueError("a rate key names a layer or a neuron, not both")
        if _layout_for(self) is None:
            raise ValueError(f"no name layout of family {self.family!r} fits {self!r}")

    def __str__(self) -> str:
        layout = _layout_for(self)
        if layout is None:  # refused in __post_init__
            raise ValueError(f"no name layout of family {self.family!r} fits {self!r}")
        return ".".join(_render(self, layout))

    @classmethod
    def parse(cls, name: str) -> RateKey:
        """The key whose ``str`` is ``name`` (``ValueError`` if no family's layout fits)."""
        if not isinstance(name, str):
            raise TypeError(f"a rate name must be a str, got {type(name).__name__}")
        tokens = name.split(".")
        for family, layouts in _LAYOUTS.items():
            for layout in layouts:
                fields = _match(layout, tokens, 0, {"family": family})
                if fields is not None:
                    key = cls(**fields)
                    if str(key) == name:
                        return key
        raise ValueError(f"{name!r} is no rate name of any family {FAMILIES}")

    def to_dict(self) -> dict:
        """The non-empty fields (for ``report.json``)."""
        return {name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None}

    def replace(self, **changes: Any) -> RateKey:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- layouts
# A layout is the order of a name's parts: ("lit", text) a fixed word; ("field", name) a field's value;
# a trailing "?" on the field name marks it optional.  ("lit?", text, field, value): an optional fixed
# word that stands for field = value.  Each family lists its layouts; str() uses the first that fits.
#: one slot of a layout, and a layout
Slot = tuple[str, ...]
Layout = tuple[Slot, ...]

_LAYOUTS: dict[str, list[Layout]] = {
    "notebook": [(("lit", "notebook"), ("field", "place?"), ("field", "finder?"), ("field", "outcome"),
                  ("field", "unit?"), ("field", "subset?"))],
    "generated": [(("field", "rule"), ("field", "place?"), ("field", "outcome"), ("field", "unit?"),
                   ("field", "subset?"))],
    "region": [
        (("lit", "region"), ("field", "finder?"), ("field", "rule"), ("field", "place?"), ("field", "outcome"),
         ("field", "subset?")),
        (("lit", "region"), ("field", "outcome"), ("field", "place")),  # region.output_root.layer{k}
    ],
    "full_backward": [(("lit?", "notebook", "subject", SEED), ("lit", "full_backward"), ("field", "finder"),
                       ("field", "place?"), ("field", "outcome"))],
    "agreement": [(("lit", "agreement"), ("field", "subject"), ("field", "rule"), ("field", "outcome"))],
    "subject": [(("lit", "subject"), ("field", "subject"), ("field", "rule?"), ("field", "place?"),
                 ("field", "outcome"), ("field", "unit?"), ("field", "subset?"))],
    "conformance": [(("lit", "conformance"), ("field", "subject"), ("field", "outcome"), ("field", "subset?"))],
    # insensitivity.z+.depth8.outputs.insensitive; insensitivity.digits_mlp.z+.random.insensitive;
    # insensitivity.vgg16_simulation.depth16.columns.insensitive.nonnegative
    "insensitivity": [
        (("lit", "insensitivity"), ("field", "rule"), ("field", "depth?"), ("field", "pair"), ("field", "outcome")),
        (("lit", "insensitivity"), ("field", "subject"), ("field", "rule"), ("field", "pair"), ("field", "outcome")),
        (("lit", "insensitivity"), ("field", "subject"), ("field", "depth?"), ("field", "pair"), ("field", "outcome"),
         ("field", "subset")),
    ],
    # invariance.z+.unchanged; invariance.digits_mlp.zB.unchanged
    "invariance": [
        (("lit", "invariance"), ("field", "rule"), ("field", "outcome")),
        (("lit", "invariance"), ("field", "subject"), ("field", "rule"), ("field", "outcome")),
    ],
    # randomisation.digits_cnn.z+.top2.rank_similar
    "randomisation": [(("lit", "randomisation"), ("field", "subject"), ("field", "rule"), ("field", "randomised"),
                       ("field", "outcome"))],
}


def _implied(key: RateKey) -> dict:
    """Field values a family implies without naming them."""
    return {"subject": SEED} if key.family == "notebook" else {}


def _uses(layout: Layout) -> set[str]:
    used: set[str] = set()
    for slot in layout:
        if slot[0] == "lit?":
            used.add(slot[2])
        elif slot[0] == "field":
            name = slot[1].rstrip("?")
            used.update(("layer", "neuron") if name == "place" else (name,))
    return used


def _layout_for(key: RateKey) -> Layout | None:
    implied = _implied(key)
    for layout in _LAYOUTS[key.family]:
        used = _uses(layout)
        set_fields = {n for n in _FIELDS[1:] if getattr(key, n) is not None and implied.get(n) != getattr(key, n)}
        if not set_fields <= used:
            continue
        required = {slot[1] for slot in layout if slot[0] == "field" and not slot[1].endswith("?")}
        if "place" in required and key.layer is None and key.neuron is None:
            continue
        if any(r != "place" and getattr(key, r) is None for r in required):
            continue
        if any(slot[0] == "lit?" and getattr(key, slot[2]) not in (None, slot[3]) for slot in layout):
            continue
        if key.finder is not None and key.finder not in FINDERS.get(key.family, {}):
            continue
        return layout
    return None


def _render(key: RateKey, layout: Layout) -> list[str]:
    parts = []
    for slot in layout:
        if slot[0] == "lit":
            parts.append(slot[1])
        elif slot[0] == "lit?":
            if getattr(key, slot[2]) == slot[3]:
                parts.append(slot[1])
        else:
            name = slot[1].rstrip("?")
            if name == "place":
                if key.layer is not None:
                    parts.append(f"layer{key.layer}")
                elif key.neuron is not None:
                    parts.append(f"neuron{key.neuron}")
            elif name in _NUMBERED:
                if getattr(key, name) is not None:
                    parts.append(f"{_NUMBERED[name]}{getattr(key, name)}")
            elif getattr(key, name) is not None and not (name == "subject" and key.family == "notebook"):
                parts.append(str(getattr(key, name)))
    return parts


def _token_value(name: str, token: str, family: str) -> str | int | tuple[str, int] | None:
    """The field value ``token`` stands for, or None if it cannot fill field ``name``."""
    if name == "place":
        found = re.fullmatch(r"(layer|neuron)(\d+)", token)
        return None if found is None else (found.group(1), int(found.group(2)))
    if name in _NUMBERED:
        found = re.fullmatch(_NUMBERED[name] + r"(\d+)", token)
        return None if found is None or int(found.group(1)) < 1 else int(found.group(1))
    if name == "pair":
        return token if token in PAIRS else None
    if name == "outcome":
        return token if token in OUTCOMES else None
    if name == "unit":
        return token if token in UNITS else None
    if name == "subset":
        return token if token in SUBSETS else None
    if name == "finder":
        return token if token in FINDERS.get(family, {}) else None
    return token if _WORD.match(token) and token not in FAMILIES and not _RESERVED.match(token) else None


def _match(layout: Layout, tokens: list[str], at: int, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Fields filled by matching ``layout`` against ``tokens[at:]`` (backtracking over optional slots)."""
    if not layout:
        return fields if at == len(tokens) else None
    slot, rest = layout[0], layout[1:]
    if slot[0] == "lit":
        return _match(rest, tokens, at + 1, fields) if at < len(tokens) and tokens[at] == slot[1] else None
    if slot[0] == "lit?":
        if at < len(tokens) and tokens[at] == slot[1]:
            found = _match(rest, tokens, at + 1, {**fields, slot[2]: slot[3]})
            if found is not None:
                return found
        return _match(rest, tokens, at, fields)
    name = slot[1].rstrip("?")
    optional = slot[1].endswith("?")
    if at < len(tokens):
        value = _token_value(name, tokens[at], fields["family"])
        if value is not None:
            update = {value[0]: value[1]} if isinstance(value, tuple) else {name: value}
            found = _match(rest, tokens, at + 1, {**fields, **update})
            if found is not None:
                return found
    return _match(rest, tokens, at, fields) if optional else None


# --------------------------------------------------------------------------- descriptions
_POPULATION = {
    "notebook": "seed network ([10, 10, 10, 10, 2], seed 2, float32), z+, 1000 points",
    "generated": "generated networks (i.i.d., depth 1-5, width 1-24)",
    "region": "generated networks (depth <= 4, width <= 12)",
    "full_backward": "generated networks (depth <= 3)",
    "agreement": "generated networks",
    "subject": "subject",
    "conformance": "implementation",
    "insensitivity": "generated networks (torch init, width 16, 4 outputs)",
    "invariance": "generated networks (i.i.d., depth 1-5, width 1-24)",
    "randomisation": "subject",
}


def describe(key: RateKey) -> str:
    """One line saying exactly what ``key``'s rate counts, composed from its fields."""
    if key.family == "full_backward" and key.subject == SEED:
        where = "seed network, full_backward"
    elif key.family in ("subject", "conformance", "randomisation") or (
        key.family in ("insensitivity", "invariance") and key.subject
    ):
        where = f"{_POPULATION['subject']} {key.subject}"
    elif key.family == "agreement":
        where = f"{key.rule} vs {key.subject}, {_POPULATION['agreement']}"
    else:
        where = _POPULATION[key.family]
    parts = [where]
    if key.rule is not None and key.family != "agreement":
        parts.append(f"rule {key.rule}")
    if key.finder is not None:
        parts.append(f"roots by {FINDERS[key.family][key.finder]}")
    if key.layer is not None:
        parts.append(f"layer {key.layer} (judged with f_{key.layer})")
    if key.neuron is not None:
        parts.append(f"first-layer hidden neuron {key.neuron}")
    if key.depth is not None:
        parts.append(f"depth {key.depth}")
    if key.randomised is not None:
        parts.append(f"top {key.randomised} layer(s) re-initialised")
    if key.pair is not None:
        parts.append(f"pair: {PAIRS[key.pair]}")
    if key.unit is not None:
        parts.append(UNITS[key.unit])
    if key.subset is not None:
        parts.append(SUBSETS.get(key.subset, key.subset))
    return ", ".join(parts) + ": " + OUTCOMES[key.outcome]


# --------------------------------------------------------------------------- rates fixed by construction
__all__ += ["by_design", "SEED_TOP_LAYER"]

#: the seed network's top layer (``ReLUNetwork.random([10, 10, 10, 10, 2])``: layers 0..3)
SEED_TOP_LAYER = 3


def by_design(key: RateKey, top_layer: int = SEED_TOP_LAYER) -> str | None:
    """Why ``key``'s rate is 0 % or 100 % by construction, or None for a measured finding.

    Parameters
    ----------
    key
        The rate's key.
    top_layer
        Index of the top layer of the network the ``notebook`` family studies
        (the seed network's, :data:`SEED_TOP_LAYER`); other families mix
        networks of several depths, so their per-layer rates are never fixed.

    Returns
    -------
    str or None
        One sentence saying why the rate cannot be anything else, for the
        report to keep such rows apart from what the run measured.
    """
    if key.outcome == "gradient_match" and key.subset == "midpoint":
        return ("100 % by the in-region finders' contract: a root inside the input's region keeps the gradient "
                "halfway to the input (asserted by the test that records it)")
    if key.family == "invariance" and key.subject is None and key.rule in ("w2", "zB"):
        return ("100 % by construction: the rule's direction at the input does not change under the compensated shift "
                "(w2 reads no input; zB's box moves with it), asserted by properties/suite/test_invariance.py")
    if key.family == "agreement" and key.subject == "zennit" and key.outcome == "agree_where_conditioned":
        return "100 % on bias-negative networks: every well-conditioned point agrees with zennit (asserted)"
    top_gradient = key.family == "notebook" and key.layer == top_layer and key.outcome == "gradient_match"
    if top_gradient and (key.unit == "points" or (key.finder is not None and key.subset is None)):
        return (f"0 % by construction: the explained output's own root at the top layer {top_layer} sits on its hinge "
                f"(f_{top_layer}(root) = 0) where torch's relu'(0) = 0 zeroes the gradient")
    return None
