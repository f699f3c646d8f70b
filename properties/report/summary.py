"""The report's answers-first summary, generated from the rows (never hand-written numbers).

:func:`summarize` turns the rows of a run into

* the **verdict** (:class:`Gate`): the gate's result in one line, with the
  names of the offending rows;
* the **changes since the baseline** (:func:`changes`): the rows whose rate
  moved most;
* the **answers**: one short sentence per question, each with one rate and
  its interval and a word of :data:`SCALE` decided from the interval
  (:func:`scale_word`); a low rate that another row explains carries the
  cause (:attr:`Answer.causes`);
* the rules-at-a-glance table (rows: rules; columns: zero output, gradient
  match, region match, in-region root exists, conservation).

Rows are found by their :class:`~properties.measure.keys.RateKey` fields only.  A
family without rows contributes no sentence, so the same summary serves our
sweeps and a user's ``subject`` / ``conformance`` run.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..measure.keys import FINDERS, SEED, RateKey
from .sections import natural_key, row_key, split_by_design

__all__ = ["Answer", "Gate", "Glance", "Summary", "summarize", "format_rate", "scale_word", "changes", "causes",
           "row_anchor", "GLANCE_COLUMNS", "SCALE", "LOW_RATE", "CHANGES_SHOWN", "FAILING_STATUSES"]


@dataclasses.dataclass
class Answer:
    """One question answered with one rate.

    ``verdict``: a word of :data:`SCALE` (two where the interval straddles);
    ``detail``: the rate, its interval and what was counted; ``names``: the
    row(s) it comes from; ``label``: which rule / finder / layer, where one
    question has an answer per label; ``causes``: sentences naming another
    row that explains a low rate.
    """

    question: str
    verdict: str
    detail: str
    names: list
    label: str | None = None
    causes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Gate:
    """The gate's result: ``verdict`` in one line, the offending rows by status, the new rows."""

    verdict: str
    passed: bool
    failing: dict  # status -> [row names], failing statuses only
    new: list
    total: int

    @property
    def names(self) -> list:
        """Every offending row, then the new ones."""
        return [n for names in self.failing.values() for n in names] + self.new


@dataclasses.dataclass
class Glance:
    """The rules-at-a-glance table: ``cells[rule][column]`` is a row or None."""

    rules: list
    columns: list
    cells: dict


@dataclasses.dataclass
class Summary:
    answers: list
    gate: Gate
    glance: Glance | None
    confidence: float | None
    changes: list = dataclasses.field(default_factory=list)
    causes: dict = dataclasses.field(default_factory=dict)


def percent(value: float | None) -> str:
    """``"42.16 %"``, or a dash without data."""
    return "—" if value is None else f"{100 * value:.2f} %"


def interval(low: float | None, high: float | None) -> str:
    """``"[39.10, 45.27]"`` in percent, or a dash without data."""
    return "—" if low is None or high is None else f"[{100 * low:.2f}, {100 * high:.2f}]"


def format_rate(row: Mapping) -> str:
    """``"42.16 % [39.10, 45.27]"``: the rate and its interval, in percent."""
    if row.get("rate") is None:
        return "no data (0 trials)"
    return f"{percent(row['rate'])} {interval(row['ci_low'], row['ci_high'])}"


# --------------------------------------------------------------------------- the scale of words
#: the words for a share, from the interval: (word, the band of shares it names, exclusive upper end);
#: "Never" and "Always" are kept for 0 successes and for every trial
SCALE = (
    ("Almost never", 0.0, 0.05),
    ("Rarely", 0.05, 0.25),
    ("Sometimes", 0.25, 0.75),
    ("Often", 0.75, 0.95),
    ("Almost always", 0.95, 1.0),
)
#: how the glossary states the scale (one line per word)
SCALE_TEXT = (
    ("Never", "0 successes"),
    ("Almost never", "the interval's upper bound is below 5 %"),
    ("Rarely", "the interval lies below 25 %"),
    ("Sometimes", "the interval lies within 25-75 %"),
    ("Often", "the interval lies above 75 %"),
    ("Almost always", "the interval's lower bound is above 95 %"),
    ("Always", "every trial"),
)


def _band(share: float, *, upper: bool) -> int:
    """Index in :data:`SCALE` of the band holding ``share`` (an upper bound on a band's edge belongs below it)."""
    for i, (_, low, high) in enumerate(SCALE):
        if (low < share <= high) if upper else (low <= share < high):
            return i
    return 0 if share <= 0 else len(SCALE) - 1


def scale_word(row: Mapping) -> str:
    """The word of :data:`SCALE` for ``row``'s rate, decided from its interval.

    ``"Never"`` for 0 successes, ``"Always"`` for every trial; otherwise the
    bands of the interval's ends: one word where both ends fall in the same
    band, two (``"Rarely to sometimes"``) where the interval straddles bands.
    ``"Not measured"`` without trials.
    """
    if not row.get("trials") or row.get("rate") is None:
        return "Not measured"
    if row["successes"] == 0:
        return "Never"
    if row["successes"] == row["trials"]:
        return "Always"
    low, high = _band(row["ci_low"], upper=False), _band(row["ci_high"], upper=True)
    if low == high:
        return SCALE[low][0]
    return f"{SCALE[low][0]} to {SCALE[high][0].lower()}"


_verdict = scale_word

#: a rate below this share is "low": the summary looks for another row that explains it
LOW_RATE = 0.95


def row_anchor(name: str) -> str:
    """The HTML id of a rate's row in report.md and report.html (links from the verdict and the changes)."""
    return "rate-" + re.sub(r"[^A-Za-z0-9_-]", lambda m: {"+": "plus", ".": "--"}.get(m.group(), "-"), name)


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

    def get(self, **fields: Any) -> Mapping | None:
        try:
            return self.by_key.get(_normal(RateKey(**fields)))
        except ValueError:
            return None

    def where(self, **fields: Any) -> list[tuple[RateKey, Mapping]]:
        return [(k, r) for k, r in self.keyed if all(getattr(k, f) == v for f, v in fields.items())]

    def families(self) -> set:
        return {k.family for k, _ in self.keyed}


def _answer(question: str, row: Mapping, what: str, label: str | None = None) -> Answer:
    return Answer(question, scale_word(row), f"{format_rate(row)} of {row['trials']} {what}", [row["name"]], label)


def _one(question: str, row: Mapping | None, what: str, label: str | None = None) -> Answer | None:
    return None if row is None else _answer(question, row, what, label)


def _notebook(rows: _Rows) -> list[Answer]:
    out: list[Answer | None] = [
        _one("Does a first-layer z+ root set the explained output to zero (|f(root)| <= 1e-6)?",
             rows.get(family="notebook", outcome="zero_output"), "roots"),
        _one("Is the output unchanged at the root (the notebook's printed number, f(x) - f(root) < 1e-6)?",
             rows.get(family="notebook", outcome="output_unchanged"), "roots"),
        _one("Does a root have the input's gradient?",
             rows.get(family="notebook", outcome="gradient_match", unit="roots"), "roots"),
        _one("Do all roots of a point have the input's gradient?",
             rows.get(family="notebook", outcome="gradient_match", unit="points"), "points"),
        _one("Is there a valid first-layer root inside the input's region at all (exact LP)?",
             rows.get(family="notebook", layer=0, outcome="region_root_exists"), "relevant (point, neuron) pairs"),
    ]
    return [a for a in out if a is not None]


def _per_label(question: str, pairs: Sequence[tuple[str | None, Mapping]], what: str) -> list[Answer]:
    """One answer per label (rule, finder, layer) of one question: never a range over several rates."""
    measured = sorted(((label, r) for label, r in pairs if r.get("rate") is not None),
                      key=lambda p: natural_key(p[0] or ""))
    return [_answer(question, r, what, label) for label, r in measured]


def _region(rows: _Rows) -> list[Answer]:
    exists = [(k.rule, r) for k, r in rows.where(family="region", finder=None, layer=None, outcome="root_exists")]
    output = [(f"layer {k.layer}", r) for k, r in rows.where(family="region", rule=None, outcome="output_root")]
    return (_per_label("Over generated networks, does a valid Taylor root "
                       "exist inside the input's linear region (exact LP)?",
                       exists, "relevant (point, neuron) pairs")
            + _per_label("Does the input's region of f_k contain any point with f_k = 0?", output, "points"))


def _full_backward(rows: _Rows) -> list[Answer]:
    out = []
    for subject, where in ((SEED, "the seed network"), (None, "generated networks")):
        pairs = [(FINDERS["full_backward"].get(k.finder, k.finder), r)
                 for k, r in rows.where(family="full_backward", subject=subject, layer=None, outcome="conserved")
                 if k.finder is not None]
        out += _per_label(f"Does full_backward conserve relevance on {where} (sum_i R_i within 1 % of f(x))?", pairs,
                          "points")
    return out


#: how the summary names an agreement subject that is not a library's own name
_LIBRARIES = {"breaks": "zennit on the populations where agreement is known to break (positive biases)"}


def _agreement(rows: _Rows) -> list[Answer]:
    out = []
    subjects = sorted({k.subject for k, _ in rows.where(family="agreement") if k.subject is not None},
                      key=lambda s: (s in _LIBRARIES, natural_key(s)))
    for subject in subjects:
        pairs = [(k.rule, r) for k, r in rows.where(family="agreement", subject=subject, outcome="points")]
        library = _LIBRARIES.get(subject, subject)
        out += _per_label(f"Does dtd.train_free equal {library} point by point (within the stabiliser bound)?", pairs,
                          "points")
    return out


def _subjects(rows: _Rows) -> list[Answer]:
    """Per subject and rule: conservation (points) and the first layer's gradient match, each its own sentence."""
    out = []
    for subject in sorted({k.subject for k, _ in rows.where(family="subject")}, key=natural_key):
        for rule in sorted({k.rule for k, _ in rows.where(family="subject", subject=subject)}, key=natural_key):
            out += [a for a in (
                _one(f"Does {rule} conserve relevance on subject {subject} (sum_i R_i within 1 % of f(x))?",
                     rows.get(family="subject", subject=subject, rule=rule, outcome="conserved"), "points"),
                _one(f"Do {rule} roots of subject {subject}'s first layer keep the input's gradient?",
                     rows.get(family="subject", subject=subject, rule=rule, layer=0, outcome="gradient_match"),
                     "roots"),
            ) if a is not None]
    return out


def _implementations(rows: _Rows) -> list[Answer]:
    """Per implementation: how many properties always hold, and the weakest one's rate (the matrix has every cell)."""
    out = []
    for subject in sorted({k.subject for k, _ in rows.where(family="conformance")}, key=natural_key):
        pairs = [(k, r) for k, r in rows.where(family="conformance", subject=subject) if r.get("rate") is not None]
        if not pairs:
            continue
        held = sum(r["successes"] == r["trials"] for _, r in pairs)
        key, weakest = min(pairs, key=lambda p: (p[1]["rate"], natural_key(str(p[0]))))
        where = key.outcome + ("" if key.subset is None else f" ({key.subset.replace('_', ' ')})")
        question = f"Does implementation {subject} keep DTD's promises?"
        broken = len(pairs) - held
        if not broken:
            verdict = "Yes"
            detail = f"every one of its {len(pairs)} properties held in every trial"
        else:
            verdict = f"No, {broken} of {len(pairs)} properties break"
            detail = (f"the weakest, {where}, holds {scale_word(weakest).lower()}: "
                      f"{format_rate(weakest)} of {weakest['trials']} trials")
        out.append(Answer(question, verdict, detail, [weakest["name"]]))
    return out


# --------------------------------------------------------------------------- the verdict and what changed
#: statuses that fail the gate, and how the verdict counts them (singular, plural)
FAILING_STATUSES = {"regression": ("regression", "regressions"),
                    "below_floor": ("below a required floor", "below a required floor")}
#: how many moved rows "Changes since the baseline" shows
CHANGES_SHOWN = 10


def _gate(all_rows: list[Mapping]) -> Gate:
    """The gate's one-line verdict: ok, or how many rows fail it by status; the new rows (no baseline entry) pass."""
    failing: dict[str, list] = {}
    for r in sorted(all_rows, key=lambda r: natural_key(r["name"])):
        if r["status"] not in ("ok", "new"):
            failing.setdefault(r["status"], []).append(r["name"])
    new = [r["name"] for r in all_rows if r["status"] == "new"]
    ok = sum(r["status"] == "ok" for r in all_rows)
    new_part = f"; {len(new)} new (no baseline entry)" if new else ""
    if failing:
        counts = []
        for status, names in failing.items():
            one, many = FAILING_STATUSES.get(status, (status, status))
            counts.append(f"{len(names)} {one if len(names) == 1 else many}")
        verdict = (f"Gate: FAILED — {', '.join(counts)} ({len(all_rows)} rates, "
                   f"{ok} consistent with the baseline{new_part})")
    else:
        verdict = (f"Gate: ok — {len(all_rows)} rate{'s' * (len(all_rows) != 1)}: "
                   f"{ok} consistent with the baseline{new_part}")
    return Gate(verdict, not failing, failing, new, len(all_rows))


def changes(rows: Iterable[Mapping], limit: int = CHANGES_SHOWN) -> list[Mapping]:
    """The rows whose rate moved most against the baseline: failing rows first, then by the size of the move.

    Rows without a baseline entry (or without data) and rows that did not
    move are left out; at most ``limit`` rows.
    """
    moved = []
    for r in rows:
        base = r.get("baseline") or {}
        if r.get("rate") is None or base.get("rate") is None:
            continue
        delta = r["rate"] - base["rate"]
        if delta == 0 and r["status"] in ("ok", "new"):
            continue
        moved.append((r["status"] in ("ok", "new"), -abs(delta), natural_key(r["name"]), r))
    return [r for *_, r in sorted(moved, key=lambda m: m[:3])][:limit]


# --------------------------------------------------------------------------- causes
#: the accounting counts a subject run records (properties.subjects.subject), by layer: how to read them back
_ACCOUNT = re.compile(r"^subject (?P<subject>\S+), (?P<rule>\S+), layer (?P<layer>\d+): "
                      r"mean (?P<field>.+) relevance \(dtd\.accounting\)$")


def accounting_counts(config: Mapping) -> dict:
    """``{(subject, rule): {layer: {field: mean per point}}}`` from the run's counts
    (fields: upper, conserved, lost, bias share)."""
    out: dict = {}
    for label, value in config.items():
        found = _ACCOUNT.match(str(label))
        if found and isinstance(value, (int, float)):
            out.setdefault((found["subject"], found["rule"]), {}).setdefault(int(found["layer"]), {})[
                found["field"]
            ] = float(value)
    return out


def causes(rows: Iterable[Mapping], config: Mapping | None = None) -> dict[str, list[str]]:
    """For low rates that another row explains: ``{row name: [sentence, ...]}``.

    * a subject's (or full backward's) conservation below :data:`LOW_RATE`
      while roots are missing at some layer: that layer's ``root_exists`` and
      the relevance lost there (the subject's accounting);
    """
    indexed = _Rows(rows)
    books = accounting_counts(config or {})
    out: dict[str, list[str]] = {}
    for key, r in indexed.keyed:
        if r.get("rate") is None or r["rate"] >= LOW_RATE:
            continue
        found = []
        if key.outcome == "conserved" and key.family in ("subject", "full_backward"):
            fields = dict(family="subject", subject=key.subject, rule=key.rule) if key.family == "subject" else \
                dict(family="full_backward", subject=key.subject, finder=key.finder)
            missing = sorted(((k.layer, m) for k, m in indexed.where(outcome="root_exists", **fields)
                              if k.layer is not None and m.get("rate") is not None and m["rate"] < 1),
                             key=lambda p: p[0])
            account = books.get((key.subject, key.rule), {})
            for layer, m in missing:
                lost = account.get(layer, {})
                share = ""
                if lost.get("upper"):
                    share = (f"; {100 * lost.get('lost', 0.0) / lost['upper']:.1f} % "
                             f"of the relevance reaching layer {layer} is lost there")
                found.append(f"← root_exists at layer {layer} is {format_rate(m)}: "
                             f"neurons without a root lose their relevance{share}")
        if found:
            out[r["name"]] = found
    return out


#: the rules-at-a-glance columns: title and the key of a rule's cell (None: the rule has no such rate)
GLANCE_COLUMNS = {
    "zero output": lambda rule: dict(family="generated", rule=rule, outcome="zero_output", subset="relevant"),
    "gradient match": lambda rule: dict(family="generated", rule=rule, outcome="gradient_match", subset="relevant"),
    "region match": lambda rule: dict(family="generated", rule=rule, outcome="region_match", subset="relevant"),
    "in-region root exists": lambda rule: dict(family="region", rule=rule, outcome="root_exists"),
    "conservation (full backward)": lambda rule: dict(family="full_backward", finder=rule, outcome="conserved"),
}


def _glance(rows: _Rows) -> Glance | None:
    rules = sorted({k.rule for k, _ in rows.keyed if k.family in ("generated", "region") and k.rule is not None},
                   key=natural_key)
    if not rules:
        return None
    cells = {rule: {title: rows.get(**spec(rule)) for title, spec in GLANCE_COLUMNS.items()} for rule in rules}
    return Glance(rules, list(GLANCE_COLUMNS), cells)


def summarize(rows: Iterable[Mapping], confidence: float | None = None, config: Mapping | None = None) -> Summary:
    """The answers-first summary of ``rows`` (report rows; rows fixed by construction are left out of the answers).

    ``config``: the run's config (its accounting counts name the causes of low conservation).
    """
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
        answers += _subjects(indexed)
    if "conformance" in families:
        answers += _implementations(indexed)
    explained = causes(measured, config)
    for answer in answers:
        answer.causes = [c for name in answer.names for c in explained.get(name, [])]
    return Summary(answers, _gate(all_rows), _glance(indexed), confidence, changes(all_rows), explained)
