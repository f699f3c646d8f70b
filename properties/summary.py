"""The report's answers-first summary, generated from the rows (never hand-written numbers).

:func:`summarize` turns the rows of a run into the questions DTD's theory
raises, each answered with the rate, its interval and the rows it comes
from; the run's gate result; and the rules-at-a-glance table (rows: rules;
columns: zero output, gradient match, region match, in-region root exists,
conservation).  Rows are found by their :class:`~properties.keys.RateKey`
fields only.  A family without rows contributes no sentence, so the same
summary serves our sweeps and a user's ``subject`` / ``conformance`` run.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional

from .keys import FINDERS, SEED, RateKey
from .sections import natural_key, row_key, split_by_design

__all__ = ["Answer", "Glance", "Summary", "summarize", "format_rate", "GLANCE_COLUMNS"]


@dataclasses.dataclass
class Answer:
    """One question answered: ``verdict`` (a word or two), ``detail`` (rates with intervals), the rows' names."""

    question: str
    verdict: str
    detail: str
    names: list


@dataclasses.dataclass
class Glance:
    """The rules-at-a-glance table: ``cells[rule][column]`` is a row or None."""

    rules: list
    columns: list
    cells: dict


@dataclasses.dataclass
class Summary:
    answers: list
    gate: Answer
    glance: Optional[Glance]
    confidence: Optional[float]


def percent(value: Optional[float]) -> str:
    """``"42.16 %"``, or a dash without data."""
    return "—" if value is None else f"{100 * value:.2f} %"


def interval(low: Optional[float], high: Optional[float]) -> str:
    """``"[39.10, 45.27]"`` in percent, or a dash without data."""
    return "—" if low is None else f"[{100 * low:.2f}, {100 * high:.2f}]"


def format_rate(row: Mapping) -> str:
    """``"42.16 % [39.10, 45.27]"``: the rate and its interval, in percent."""
    if row.get("rate") is None:
        return "no data (0 trials)"
    return f"{percent(row['rate'])} {interval(row['ci_low'], row['ci_high'])}"


def _verdict(row: Mapping) -> str:
    if not row.get("trials"):
        return "Not measured"
    if row["successes"] == 0:
        return "Never"
    if row["successes"] == row["trials"]:
        return "Always"
    if row["ci_low"] >= 0.99:
        return "Almost always"
    if row["ci_high"] <= 0.01:
        return "Almost never"
    return "Sometimes"


def _normal(key: RateKey) -> RateKey:
    """The notebook family implies the seed subject: one spelling for lookups."""
    return key.replace(subject=None) if key.family == "notebook" else key


class _Rows:
    """The run's rows indexed by key."""

    def __init__(self, rows: Iterable[Mapping]):
        self.keyed = []
        self.by_key = {}
        for r in rows:
            key = row_key(r)
            if key is not None:
                self.keyed.append((_normal(key), r))
                self.by_key[_normal(key)] = r

    def get(self, **fields) -> Optional[Mapping]:
        try:
            return self.by_key.get(_normal(RateKey(**fields)))
        except ValueError:
            return None

    def where(self, **fields) -> list[tuple[RateKey, Mapping]]:
        return [(k, r) for k, r in self.keyed if all(getattr(k, f) == v for f, v in fields.items())]

    def families(self) -> set:
        return {k.family for k, _ in self.keyed}


def _one(question: str, row: Optional[Mapping], what: str) -> Optional[Answer]:
    if row is None:
        return None
    return Answer(question, _verdict(row), f"{format_rate(row)} of {row['trials']} {what}", [row["name"]])


def _listing(pairs: list[tuple[str, Mapping]]) -> str:
    return "; ".join(f"{label} {format_rate(r)}" for label, r in pairs)


def _notebook(rows: _Rows) -> list[Answer]:
    out = [
        _one("Does a first-layer z+ root set the explained output to zero (|f(root)| <= 1e-6)?",
             rows.get(family="notebook", outcome="zero_output"), "roots"),
        _one("Is the output unchanged at the root (the notebook's printed number, f(x) - f(root) < 1e-6)?",
             rows.get(family="notebook", outcome="output_unchanged"), "roots"),
        _one("Does a root have the input's gradient?", rows.get(family="notebook", outcome="gradient_match", unit="roots"), "roots"),
        _one("Do all roots of a point have the input's gradient?",
             rows.get(family="notebook", outcome="gradient_match", unit="points"), "points"),
        _one("Is there a valid first-layer root inside the input's region at all (exact LP)?",
             rows.get(family="notebook", layer=0, outcome="region_root_exists"), "relevant (point, neuron) pairs"),
    ]
    return [a for a in out if a is not None]


def _spread(question: str, pairs: list[tuple[str, Mapping]], what: str, by: str) -> Optional[Answer]:
    """One answer over several rates (``pairs`` of label and row): their range, then each with its interval."""
    pairs = [(label, r) for label, r in pairs if r.get("rate") is not None]
    if not pairs:
        return None
    ordered = sorted(pairs, key=lambda p: (p[1]["rate"], natural_key(p[0])))
    low, high = ordered[0], ordered[-1]
    verdicts = {_verdict(r) for _, r in pairs}
    verdict = verdicts.pop() if len(verdicts) == 1 else "Sometimes"
    if len(pairs) == 1:
        return Answer(question, verdict, f"{format_rate(low[1])} of {what} ({low[0]})", [low[1]["name"]])
    if low[1]["rate"] == high[1]["rate"]:
        head = f"{percent(low[1]['rate'])} of {what} for each {by}"
    else:
        head = f"from {percent(low[1]['rate'])} ({low[0]}) to {percent(high[1]['rate'])} ({high[0]}) of {what}, by {by}"
    by_label = sorted(pairs, key=lambda p: natural_key(p[0]))
    return Answer(question, verdict, f"{head}. Each: {_listing(by_label)}", [r["name"] for _, r in by_label])


def _region(rows: _Rows) -> list[Answer]:
    exists = [(k.rule, r) for k, r in rows.where(family="region", finder=None, layer=None, outcome="root_exists")]
    output = [(f"layer {k.layer}", r) for k, r in rows.where(family="region", rule=None, outcome="output_root")]
    out = [
        _spread("Over generated networks, does a valid Taylor root exist inside the input's linear region (exact LP)?",
                exists, "relevant (point, neuron) pairs", "rule"),
        _spread("Does the input's region of f_k contain any point with f_k = 0?", output, "points", "layer"),
    ]
    return [a for a in out if a is not None]


def _full_backward(rows: _Rows) -> list[Answer]:
    out = []
    for subject, where in ((SEED, "the seed network"), (None, "generated networks")):
        pairs = [(FINDERS["full_backward"].get(k.finder, k.finder), r)
                 for k, r in rows.where(family="full_backward", subject=subject, layer=None, outcome="conserved")]
        answer = _spread(f"Does full_backward conserve relevance on {where} (sum_i R_i within 1 % of f(x))?", pairs, "points", "root finder")
        if answer is not None:
            out.append(answer)
    return out


#: how the summary names an agreement subject that is not a library's own name
_LIBRARIES = {"breaks": "zennit on the populations where agreement is known to break (positive biases)"}


def _agreement(rows: _Rows) -> list[Answer]:
    out = []
    subjects = sorted({k.subject for k, _ in rows.where(family="agreement")}, key=lambda s: (s in _LIBRARIES, natural_key(s)))
    for subject in subjects:
        pairs = [(k.rule, r) for k, r in rows.where(family="agreement", subject=subject, outcome="points")]
        library = _LIBRARIES.get(subject, subject)
        answer = _spread(f"Does dtd.train_free equal {library} point by point (within the stabiliser bound)?", pairs, "points", "rule")
        if answer is not None:
            out.append(answer)
    return out


#: a subject's answer shows its conservation and these questions of its first layer (the notebook's own layer)
_SUBJECT_FIRST_LAYER = ("zero_output", "gradient_match", "region_root_exists")


def _users(rows: _Rows, family: str, noun: str) -> list[Answer]:
    """One answer per subject or implementation: every property it was measured on (an implementation), or its
    conservation and the first layer's main questions (a subject), each with its rate."""
    out = []
    subjects = sorted({k.subject for k, _ in rows.where(family=family)}, key=natural_key)
    for subject in subjects:
        pairs = []
        for k, r in rows.where(family=family, subject=subject, neuron=None):
            if k.unit not in (None, "roots"):
                continue
            if family == "subject" and not (k.layer is None or (k.layer == 0 and k.outcome in _SUBJECT_FIRST_LAYER)):
                continue
            parts = (k.rule, None if k.layer is None else f"layer {k.layer}", k.outcome, k.subset)
            pairs.append((" ".join(str(p) for p in parts if p is not None), r))
        answer = _spread(f"How does {noun} {subject} fare?", pairs, "trials", "property")
        if answer is not None:
            out.append(answer)
    return out


def _gate(all_rows: list[Mapping]) -> Answer:
    regressions = [r["name"] for r in all_rows if r["status"] == "regression"]
    new = [r["name"] for r in all_rows if r["status"] == "new"]
    ok = sum(r["status"] == "ok" for r in all_rows)
    if regressions:
        verdict = f"{len(regressions)} regression{'s' * (len(regressions) != 1)}"
    elif new:
        verdict = f"ok, {len(new)} new"
    else:
        verdict = "ok"
    detail = f"{len(all_rows)} rates: {ok} consistent with the baseline, {len(regressions)} regression(s), {len(new)} new (no baseline entry)"
    return Answer("Is every rate consistent with the baseline?", verdict, detail, regressions + new)


#: the rules-at-a-glance columns: title and the key of a rule's cell (None: the rule has no such rate)
GLANCE_COLUMNS = {
    "zero output": lambda rule: dict(family="generated", rule=rule, outcome="zero_output", subset="relevant"),
    "gradient match": lambda rule: dict(family="generated", rule=rule, outcome="gradient_match", subset="relevant"),
    "region match": lambda rule: dict(family="generated", rule=rule, outcome="region_match", subset="relevant"),
    "in-region root exists": lambda rule: dict(family="region", rule=rule, outcome="root_exists"),
    "conservation (full backward)": lambda rule: dict(family="full_backward", finder=rule, outcome="conserved"),
}


def _glance(rows: _Rows) -> Optional[Glance]:
    rules = sorted({k.rule for k, _ in rows.keyed if k.family in ("generated", "region") and k.rule is not None}, key=natural_key)
    if not rules:
        return None
    cells = {rule: {title: rows.get(**spec(rule)) for title, spec in GLANCE_COLUMNS.items()} for rule in rules}
    return Glance(rules, list(GLANCE_COLUMNS), cells)


def summarize(rows: Iterable[Mapping], confidence: Optional[float] = None) -> Summary:
    """The answers-first summary of ``rows`` (report rows; rows fixed by construction are left out of the answers)."""
    all_rows = list(rows)
    measured, _ = split_by_design(all_rows)
    indexed = _Rows(measured)
    families = indexed.families()
    answers = []
    if "notebook" in families:
        answers += _notebook(indexed)
    if "region" in families:
        answers += _region(indexed)
    if "full_backward" in families:
        answers += _full_backward(indexed)
    if "agreement" in families:
        answers += _agreement(indexed)
    if "subject" in families:
        answers += _users(indexed, "subject", "subject")
    if "conformance" in families:
        answers += _users(indexed, "conformance", "implementation")
    return Summary(answers, _gate(all_rows), _glance(indexed), confidence)
