"""Where a report row goes and in which order: the report's sections, from the rows' keys.

Rows are grouped, sorted and selected by their :class:`~properties.measure.keys.RateKey`
fields only (:func:`row_key`), never by testing the name string: sections
follow :data:`properties.measure.keys.FAMILIES`, then "Other rates" for a name no
family's layout fits.  Inside a section rows sort *naturally* (``layer2``
before ``layer10``; a rule label's number is read as a decimal, ``_`` for
the point: ``gamma0_1 < gamma0_25 < gamma1 < gamma10``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from ..measure.keys import FAMILIES, OUTCOMES, SEED, SUBSETS, UNITS, RateKey, by_design

__all__ = ["row_key", "natural_key", "row_order", "Section", "sections", "split_by_design", "OTHER", "FAMILY_TITLES"]

#: title of the section of rows whose name no family fits
OTHER = "Other rates"

#: section titles, in reading order
FAMILY_TITLES = {
    "notebook": "The seed notebook's experiment",
    "generated": "Rules over generated networks",
    "region": "In-region roots (exact LP and sampling)",
    "full_backward": "Full backward (recursive DTD)",
    "agreement": "Agreement with zennit and captum",
    "subject": "Subjects",
    "conformance": "Implementations (conformance)",
    "insensitivity": "Class insensitivity with depth (Sixt et al. 2020)",
    "invariance": "Input invariance (Kindermans et al. 2019)",
    "randomisation": "Cascading parameter randomisation (Adebayo et al. 2018)",
}

_NUMBER = re.compile(r"(\d+(?:_\d+)?)")
_OUTCOME_ORDER = {name: i for i, name in enumerate(OUTCOMES)}
_UNIT_ORDER = {name: i for i, name in enumerate(UNITS)}
_SUBSET_ORDER = {name: i for i, name in enumerate(SUBSETS)}


def row_key(row: Mapping) -> RateKey | None:
    """The row's :class:`RateKey`: from ``row["key"]`` when present, else parsed
    from its name; None if no family fits."""
    fields = row.get("key")
    if fields:
        try:
            return RateKey(**fields)
        except (TypeError, ValueError):  # fields of a newer key layout: fall back to the name
            pass
    try:
        return RateKey.parse(row["name"])
    except ValueError:
        return None


def natural_key(text: str | None) -> tuple:
    """Sort key reading digit runs as numbers (``"0_25"`` as 0.25); None sorts first."""
    if text is None:
        return ()
    parts = _NUMBER.split(text)
    return tuple((0, float(p.replace("_", ".")), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def _place(key: RateKey) -> tuple:
    if key.layer is not None:
        return (1, key.layer)
    if key.neuron is not None:
        return (2, key.neuron)
    return (0, 0)


def row_order(key: RateKey) -> tuple:
    """Natural order of rows inside one section: subject, rule, finder, place (depth, randomised layers, pair), then
    outcome, unit and subset in their declared order."""
    return (
        natural_key(key.subject), natural_key(key.rule), natural_key(key.finder), _place(key),
        key.depth or 0, key.randomised or 0, key.pair or "",
        _OUTCOME_ORDER.get(key.outcome, len(_OUTCOME_ORDER)),
        -1 if key.unit is None else _UNIT_ORDER.get(key.unit, len(_UNIT_ORDER)),
        -1 if key.subset is None else _SUBSET_ORDER.get(key.subset, len(_SUBSET_ORDER)),
    )


def _group(key: RateKey) -> tuple[tuple, str]:
    """(order, title) of the part of a section a row belongs to."""
    if key.family == "notebook":
        if key.layer is not None:
            return (1, key.layer), f"layer {key.layer} (roots judged with f_{key.layer})"
        if key.neuron is not None:
            return (2, 0), "per hidden neuron of the first layer"
        return (0, 0), "first-layer roots: the notebook's own numbers"
    if key.family in ("generated", "region"):
        if key.rule is None:
            return (1, ()), "roots of the output itself"
        return (0, natural_key(key.rule)), f"rule {key.rule}"
    if key.family == "full_backward":
        return ((0, ()), "seed network") if key.subject == SEED else ((1, ()), "generated networks")
    if key.family in _FINDINGS:
        return _finding_group(key)
    return (0, natural_key(key.subject)), str(key.subject)


_FINDINGS = ("insensitivity", "invariance", "randomisation")


def _finding_group(key: RateKey) -> tuple[tuple, str]:
    """Parts of the findings' sections: generated networks first, then the simulation, then each subject."""
    if key.subject is None:
        return (0, ()), "generated networks"
    if key.subject == "vgg16_simulation":
        return (1, ()), "the paper's simulation (random matrices, VGG-16 shapes)"
    return (2, natural_key(key.subject)), f"subject {key.subject}"


@dataclasses.dataclass
class Section:
    """One section of the report: its family (None for "Other rates"), title and parts ``[(title, rows)]``."""

    family: str | None
    title: str
    parts: list

    @property
    def rows(self) -> list:
        return [r for _, rows in self.parts for r in rows]


def sections(rows: Iterable[Mapping]) -> list[Section]:
    """The rows grouped into sections (families in reading order, then "Other rates"), each sorted naturally.

    Only families with rows get a section.
    """
    by_family: dict[str | None, list[tuple[RateKey, Mapping]]] = {}
    other = []
    for r in rows:
        key = row_key(r)
        if key is None:
            other.append(r)
        else:
            by_family.setdefault(key.family, []).append((key, r))
    out = []
    for family in FAMILIES:
        members = by_family.get(family)
        if not members:
            continue
        groups: dict[tuple, tuple[str, list]] = {}
        for key, r in sorted(members, key=lambda kr: (row_order(kr[0]), kr[1]["name"])):
            order, title = _group(key)
            groups.setdefault(order, (title, []))[1].append(r)
        out.append(Section(family, FAMILY_TITLES[family], [groups[order] for order in sorted(groups)]))
    if other:
        out.append(Section(None, OTHER, [("", sorted(other, key=lambda r: natural_key(r["name"])))]))
    return out


def split_by_design(rows: Iterable[Mapping]) -> tuple[list, list[tuple[Mapping, str]]]:
    """(measured rows, [(row, reason)] of rows fixed by construction in section order, see
    :func:`properties.measure.keys.by_design`)."""
    measured, fixed = [], []
    for r in rows:
        key = row_key(r)
        reason = None if key is None else by_design(key)
        if key is None or reason is None:
            measured.append(r)
        else:
            fixed.append((FAMILIES.index(key.family), row_order(key), r["name"], r, reason))
    return measured, [(r, reason) for *_, r, reason in sorted(fixed, key=lambda f: f[:3])]
