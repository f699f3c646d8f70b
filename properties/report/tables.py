"""The report's tables people look at rather than read: implementations x
properties, and per subject layers x questions.

Both are built from the rows' keys (never from name strings) and rendered by
:mod:`properties.report.markdown` and :mod:`properties.report.htmlpage`:

* :func:`implementation_matrix`: one row per implementation (``conformance``
  family), one column per property and population; a cell is a row, or None
  where the property does not apply to the implementation (``n/a``).  A
  *break* is a cell with a failing trial.
* :func:`subject_grids`: per subject and rule, a layer x question grid of the
  root rates, with the relevance accounting of each layer (from above, passed
  on, lost to missing roots, bias share; :mod:`dtd.accounting`) and the
  layers named by the model's modules where the subject recorded them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from ..measure.keys import LAYER_NAMES_SEPARATOR, OUTCOMES, SUBSETS, layer_names_label
from .sections import natural_key, row_key
from .summary import accounting_counts

__all__ = ["Matrix", "SubjectGrid", "implementation_matrix", "subject_grids", "is_break", "SUBJECT_QUESTIONS"]

#: the questions of a subject's grid, in column order (those a run measured are shown)
SUBJECT_QUESTIONS = ("root_exists", "zero_output", "output_unchanged", "gradient_match", "region_match", "in_domain",
                     "region_root_exists")


def is_break(row: Mapping | None) -> bool:
    """A cell where the property failed at least once (or a regression)."""
    return row is not None and (
        row.get("status") in ("regression", "below_floor")
        or (bool(row.get("trials")) and row["successes"] < row["trials"])
    )


@dataclasses.dataclass
class Matrix:
    """``cells[implementation][column]``: a row, or None (n/a); ``columns``: ``(outcome, subset)`` pairs."""

    implementations: list
    columns: list
    cells: dict

    @staticmethod
    def title(column: tuple) -> str:
        outcome, subset = column
        return outcome if subset is None else f"{outcome} ({subset.replace('_', ' ')})"


def implementation_matrix(rows: Iterable[Mapping]) -> Matrix | None:
    """The implementation x property matrix of the ``conformance`` rows, or None without any."""
    cells: dict = {}
    columns = set()
    for r in rows:
        key = row_key(r)
        if key is None or key.family != "conformance":
            continue
        column = (key.outcome, key.subset)
        columns.add(column)
        cells.setdefault(key.subject, {})[column] = r
    if not cells:
        return None
    outcome_order = {name: i for i, name in enumerate(OUTCOMES)}
    subset_order = {name: i for i, name in enumerate(SUBSETS)}
    ordered = sorted(columns, key=lambda c: (outcome_order[c[0]], -1 if c[1] is None else subset_order[c[1]]))
    implementations = sorted(cells, key=natural_key)
    return Matrix(implementations, ordered, {i: {c: cells[i].get(c) for c in ordered} for i in implementations})


@dataclasses.dataclass
class SubjectGrid:
    """One subject and rule: ``cells[layer][question]`` (a row or None), the
    layers' names and accounting, conservation."""

    subject: str
    rule: str
    layers: list
    questions: list
    cells: dict
    names: dict  # layer -> module names ("" where unknown)
    accounting: dict  # layer -> {"upper", "conserved", "lost", "bias share"} mean per point
    conserved: Mapping | None

    def shares(self, layer: int) -> dict | None:
        """Shares of the relevance reaching the layer from above: passed on and lost to missing roots (they add up to 1
        up to rounding), and the bias share (what LRP-0 with the bias kept would hand the biases; not part of DTD's
        split).  None without accounting."""
        books = self.accounting.get(layer)
        if not books or not books.get("upper"):
            return None
        upper = books["upper"]
        lost = books.get("lost", 0.0)
        passed = books.get("conserved", upper - lost)
        return {"passed on": passed / upper, "lost (no root)": lost / upper,
                "bias share": books.get("bias share", 0.0) / upper}


def _names(config: Mapping, subject: str) -> dict:
    text = config.get(layer_names_label(subject))
    if not isinstance(text, str):
        return {}
    out = {}
    for part in text.split(LAYER_NAMES_SEPARATOR):
        found = re.match(r"^(\d+): (.*)$", part)
        if found:
            out[int(found.group(1))] = found.group(2)
    return out


def subject_grids(rows: Iterable[Mapping], config: Mapping | None = None) -> list[SubjectGrid]:
    """One :class:`SubjectGrid` per subject and rule of the ``subject`` rows
    (subjects, then rules, in natural order)."""
    config = config or {}
    found: dict = {}
    conserved: dict = {}
    for r in rows:
        key = row_key(r)
        if key is None or key.family != "subject" or key.rule is None or key.neuron is not None:
            continue
        if key.layer is None:
            if key.outcome == "conserved":
                conserved[(key.subject, key.rule)] = r
            continue
        if key.outcome in SUBJECT_QUESTIONS and key.unit in (None, "roots") and key.subset is None:
            found.setdefault((key.subject, key.rule), {}).setdefault(key.layer, {})[key.outcome] = r
    books = accounting_counts(config)
    grids = []
    for subject, rule in sorted(set(found) | set(conserved), key=lambda p: (natural_key(p[0]), natural_key(p[1]))):
        cells = found.get((subject, rule), {})
        layers = sorted(set(cells) | set(books.get((subject, rule), {})))
        questions = [q for q in SUBJECT_QUESTIONS if any(q in cells.get(k, {}) for k in layers)]
        names = _names(config, subject)
        grids.append(SubjectGrid(subject, rule, layers, questions,
                                 {k: {q: cells.get(k, {}).get(q) for q in questions} for k in layers},
                                 {k: names.get(k, "") for k in layers}, books.get((subject, rule), {}),
                                 conserved.get((subject, rule))))
    return grids
