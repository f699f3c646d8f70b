"""``report.md``: the verdict first, the changes since the baseline, the answers, the tables, every rate, the glossary.

The text is generated from the rows (:mod:`properties.report.summary`), grouped and
ordered by their keys (:mod:`properties.report.sections`); rows fixed by
construction (:func:`properties.measure.keys.by_design`) get a table of their own,
apart from the measured findings.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

from .papers import opening
from .sections import Section, sections, split_by_design
from .summary import SCALE_TEXT, Summary, format_rate, interval, percent, row_anchor, scale_word
from .tables import Matrix, SubjectGrid, implementation_matrix, is_break, subject_grids

__all__ = ["markdown", "GLOSSARY", "RUN_SETTINGS", "SETTING_LABELS", "reading_guide", "percent", "interval", "setting",
           "section_title", "YOURS", "verdict", "moved", "VERDICT_LINKS"]

#: the glossary: anchor -> (term, explanation); the report links each term from its first use
GLOSSARY = {
    "f_k": ("f_k",
            "The network from layer k up to the explained output: f_k(a) = net_{>=k}(a)[output], a function of "
            "layer k's input activations a. Roots of layer k are judged with f_k (f_0 = f, the whole network)."),
    "region": ("region and its closure", "The input's linear region of f_k: every input whose ReLUs of layers "
                                         ">= k (and the explained output) have the same on/off pattern as the "
                                         "input's; f_k is affine there, so a first-order Taylor expansion is "
                                         "exact. Its closure adds the boundary: a neuron whose pre-activation "
                                         "is within tolerance of 0 counts as matching either state."),
    "relevant": ("relevant vs trivial roots", "A neuron with upper relevance R_j = 0 gets the trivial root a "
                                              "itself (t = 0): it trivially keeps the input's gradient and region. "
                                              "Relevant roots are those of neurons with R_j != 0. Rates named .all "
                                              "include trivial roots (as the notebook did), .relevant exclude them."),
    "design-effect": ("design effect (deff)", "How much clustering (roots of one point, points of one network) "
                                              "inflates the variance over independent trials: the interval uses the "
                                              "effective sample size trials / deff, deff estimated from the "
                                              "cluster-robust variance over the clusters; a rate of 0 % or 100 % has "
                                              "no spread to estimate and takes the largest deff clusters of its sizes "
                                              "can have (clusters passing or failing as a whole: sum t_c^2 / trials)."),
    "interval": ("interval method", "wilson: the Wilson score interval for independent trials. wilson-clustered: "
                                    "the Wilson interval on the effective sample size trials / deff (see design "
                                    "effect), with the quantile of Student's t on clusters - 1 degrees of freedom "
                                    "where deff was estimated. A rate is a regression when its interval and the "
                                    "baseline's do not overlap; a rate without data contradicts no baseline."),
    "below-floor": ("below_floor", "An absolute gate, with or without a baseline: a conformance property "
                                   "every implementation must satisfy (no_side_effects, finite, "
                                   "dtype_device, batch_independent; properties.measure.gates.MUST_HOLD) "
                                   "held in fewer than every trial, or a rate's point estimate is below a "
                                   "floor the run requires (--require 'PATTERN>=VALUE'). It fails the run."),
    "scale": ("the words for a rate", "Every answer's word is decided from the rate's interval: "
                                      + "; ".join(f"{word}: {rule}" for word, rule in SCALE_TEXT)
                                      + ". Where the interval straddles two of these bands "
                                        "the answer says both (\"Rarely to sometimes\")."),
    "by-design": ("by design", "A rate that is 0 % or 100 % by construction (for example a root on "
                               "its own ReLU hinge, where relu'(0) = 0, or a must-hold property the "
                               "test asserts). Such rows are listed apart from the measured findings."),
}

#: config entries that describe how the run was made (the rest are measured counts)
RUN_SETTINGS = ("confidence", "seed", "neuron_draw_seed", "hypothesis_profile", "baseline", "update_baseline",
                "your_subjects", "your_implementations", "torch", "python", "seconds")
#: how the report names each setting (which seed is which; the profile as README names it)
SETTING_LABELS = {
    "confidence": "confidence",
    "seed": "sweep seed (generated networks and the conformance kit's networks; --property-seed)",
    "neuron_draw_seed": "neuron-draw seed (subjects' sampled neurons)",
    "hypothesis_profile": "hypothesis profile (HYPOTHESIS_PROFILE)",
    "baseline": "baseline",
    "update_baseline": "baseline update",
    "your_subjects": "your subjects (--dtd-subject)",
    "your_implementations": "your implementations (--dtd-implementation)",
    "torch": "torch",
    "python": "python",
    "seconds": "seconds",
}
_HIDDEN = ("hypothesis_max_examples", "hypothesis_derandomize")
#: the config key of the subjects and implementations a user brought, per family
YOURS: dict[str | None, str] = {"subject": "your_subjects", "conformance": "your_implementations"}


def setting(config: Mapping, key: str) -> str:
    """One run setting as the report shows it (``"sweep seed (...) 0"``)."""
    value = config[key]
    if key == "hypothesis_profile" and value == "default":
        value = ("default (hypothesis's own settings: none of the suite's "
                 "profiles dev, ci, thorough is loaded outside this repository)")
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value) or "none"
    return f"{SETTING_LABELS.get(key, key)} {html.escape(str(value))}"  # paths: no raw HTML


def section_title(section: Section, config: Mapping) -> str:
    """A section's heading: "Subjects" / "Implementations", "Your ..." only when every row is the user's."""
    key = YOURS.get(section.family)
    if key is None:
        return section.title
    yours = set(config.get(key) or ())
    subjects = {title for title, _ in section.parts}
    if yours and subjects <= yours:
        return "Your " + section.title[0].lower() + section.title[1:]
    return section.title


def _part_title(section: Section, title: str, config: Mapping) -> str:
    key = YOURS.get(section.family)
    return f"{title} (yours)" if key and title in set(config.get(key) or ()) else title


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _link(anchor: str, text: str | None = None) -> str:
    return f"[{text or GLOSSARY[anchor][0]}](#{anchor})"


def reading_guide(confidence: float | None, link: Callable[..., str] = _link) -> str:
    """One paragraph on how to read every rate, linking each glossary term at its first use."""
    level = "the run's" if confidence is None else f"{100 * confidence:g} %"
    return (
        f"Every rate is a share of trials with a {level} confidence interval ({link('interval', 'interval method')}, "
        f"{link('design-effect', 'design effect')}). Roots of layer k are judged with {link('f_k')}, inside the "
        f"input's {link('region', 'linear region and its closure')}; {link('relevant', 'relevant roots')} exclude the "
        f"trivial roots of neurons without relevance. Each answer's word follows {link('scale', 'one scale')} decided "
        f"from the interval. Rates fixed {link('by-design', 'by design')} are listed apart from the findings."
    )


#: offending rows the verdict links by name (the rest are counted)
VERDICT_LINKS = 8


def _row_link(name: str) -> str:
    return f"[`{name}`](#{row_anchor(name)})"


def verdict(summary: Summary) -> list[str]:
    """The gate's verdict line, and the offending rows linked."""
    gate = summary.gate
    out = [f"**{gate.verdict}**"]
    for status, names in gate.failing.items():
        shown = ", ".join(_row_link(n) for n in names[:VERDICT_LINKS])
        more = f" and {len(names) - VERDICT_LINKS} more" if len(names) > VERDICT_LINKS else ""
        out.append(f"{status}: {shown}{more}")
    return ["", "  \n".join(out), ""]


def moved(n: int) -> str:
    """``"The row"`` / ``"The 10 rows"``."""
    return "The row" if n == 1 else f"The {n} rows"


def _changes(summary: Summary) -> list[str]:
    if not summary.changes:
        return []
    out = ["## Changes since the baseline", "",
           f"{moved(len(summary.changes))} whose rate moved most (failing rows first); rate [interval] in %.", "",
           "| name | now | baseline | change | status |", "|---|---|---|---|---|"]
    for r in summary.changes:
        base = r["baseline"]
        status = f"**{r['status']}**" if r["status"] not in ("ok", "new") else r["status"]
        out.append(f"| {_row_link(r['name'])} | {format_rate(r)} | {format_rate(base)} | "
                   f"{100 * (r['rate'] - base['rate']):+.2f} points | {status} |")
    return out + [""]


def _answers(summary: Summary) -> list[str]:
    """One bullet per question; a question answered per rule (or finder, layer) gets one sub-bullet per rate."""
    out, last = [], None
    for a in summary.answers:
        line = f"**{a.verdict}**: {a.detail}."
        if a.label is None:
            out.append(f"- {a.question} {line}")
            indent = "  "
        else:
            if a.question != last:
                out.append(f"- {a.question}")
            out.append(f"  - {a.label}: {line}")
            indent = "    "
        out += [f"{indent}- {cause}" for cause in a.causes]
        last = a.question
    return out


def _matrix(matrix: Matrix | None) -> list[str]:
    if matrix is None:
        return []
    out = ["## Implementations x properties", "",
           "Each cell: the share of trials in which the property held, its interval below; **bold**: "
           "a break (a failing trial); n/a: the property does not apply to the implementation's rule.", "",
           "| implementation | " + " | ".join(_cell(Matrix.title(c)) for c in matrix.columns) + " |",
           "|---" * (len(matrix.columns) + 1) + "|"]
    for name in matrix.implementations:
        cells = []
        for column in matrix.columns:
            r = matrix.cells[name][column]
            if r is None:
                cells.append("n/a")
                continue
            text = f"{percent(r['rate'])}<br>{interval(r['ci_low'], r['ci_high'])}"
            cells.append(f"**{text}**" if is_break(r) else text)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def _bar_text(shares: dict | None) -> str:
    if shares is None:
        return "—"
    return "; ".join(f"{label} {100 * value:.1f} %" for label, value in shares.items())


def _grids(grids: list[SubjectGrid], config: Mapping, causes: Mapping) -> list[str]:
    if not grids:
        return []
    out = ["## Subjects: layers x questions", "",
           "Per subject and rule: the share of the valid roots of relevance-carrying neurons for which each "
           "question holds, per layer (interval in brackets), and where the relevance reaching the layer went "
           "(dtd.accounting).", ""]
    for grid in grids:
        mine = grid.subject in set(config.get("your_subjects") or ())
        out += [f"### Subject {grid.subject}{' (yours)' if mine else ''}, rule {grid.rule}", ""]
        if grid.conserved is not None:
            out += [f"Conservation: **{scale_word(grid.conserved)}**, "
                    f"{format_rate(grid.conserved)} of {grid.conserved['trials']} points.", ""]
            out += [f"- `{grid.conserved['name']}` {c}" for c in causes.get(grid.conserved["name"], [])] + [""] * bool(
                causes.get(grid.conserved["name"])
            )
        out += ["| layer | " + " | ".join(grid.questions) + " | relevance from above |",
                "|---" * (len(grid.questions) + 2) + "|"]
        for k in grid.layers:
            name = f"{k}" + (f" ({_cell(grid.names[k])})" if grid.names.get(k) else "")
            cells = [("—" if r is None else f"{percent(r['rate'])} {interval(r['ci_low'], r['ci_high'])}")
                     for r in (grid.cells[k][q] for q in grid.questions)]
            out.append(f"| {name} | " + " | ".join(cells) + f" | {_bar_text(grid.shares(k))} |")
        out.append("")
        explained = [(r["name"], c) for k in grid.layers for r in grid.cells[k].values() if r is not None
                     for c in causes.get(r["name"], [])]
        out += [f"- `{n}` {c}" for n, c in explained] + [""] * bool(explained)
    return out


def _glance(summary: Summary) -> list[str]:
    glance = summary.glance
    if glance is None:
        return []
    out = [
        "## Rules at a glance",
        "",
        "Over generated networks, roots of neurons carrying relevance ("
        + _link("relevant", "relevant roots")
        + "), all layers; rate [interval] in %. In-region root exists: exact "
          "LP; conservation: full backward with the rule's closed-form roots.",
        "",
        "| rule | " + " | ".join(glance.columns) + " |",
        "|---" * (len(glance.columns) + 1) + "|",
    ]
    for rule in glance.rules:
        cells = [format_rate(row) if row else "—" for row in (glance.cells[rule][c] for c in glance.columns)]
        out.append(f"| {rule} | " + " | ".join(cells) + " |")
    return out + [""]


def _row_line(r: Mapping, causes: Mapping) -> str:
    base = r.get("baseline")
    method = r["interval"] + (f", {r['clusters']} clusters, deff {r['design_effect']:.2f}" if r.get("clusters") else "")
    status = f"**{r['status']}**" if r["status"] not in ("ok", "new") else r["status"]
    why = "".join(f"<br>{_cell(c)}" for c in [*r.get("floor", ()), *causes.get(r["name"], [])])
    return (
        f'| <a id="{row_anchor(r["name"])}"></a>`{r["name"]}` | {percent(r["rate"])} | '
        f"{interval(r['ci_low'], r['ci_high'])} | {r['successes']} / {r['trials']} | {method} | "
        f"{percent(base['rate'] if base else None)} | {status} | "
        f"{_cell(r['description'])}{why} |"
    )


_HEADER = ["| name | rate | interval | successes / trials | interval method | baseline | status | description |",
           "|---|---|---|---|---|---|---|---|"]


def _examples(rows: Sequence[Mapping]) -> list[str]:
    out = []
    for r in rows:
        if r.get("example"):
            out += ["", f"Counterexample of `{r['name']}`:", "", "```", str(r["example"]).rstrip("\n"), "```"]
    return out


def _figures(plots: Sequence[Mapping]) -> list[str]:
    if not plots:
        return []
    out = ["## Figures", ""]
    for plot in plots:
        out += [f"### {plot['title']}", ""]
        if plot.get("text"):
            out += [plot["text"], "", plot.get("caption", ""), ""]
        else:
            out += [f"![{plot['title']}]({plot['file']})", "", plot.get("caption", ""), ""]
    return out


def _run(config: Mapping) -> list[str]:
    settings = [setting(config, key) for key in RUN_SETTINGS if key in config]
    counts = {k: v for k, v in config.items() if k not in RUN_SETTINGS and k not in _HIDDEN}
    out = ["## The run", "", "Settings: " + "; ".join(settings) + "." if settings else ""]
    if counts:
        out += ["", "| measured quantity (not gated) | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(counts.items())]
    return out + [""]


def _glossary() -> list[str]:
    out = ["## Glossary", ""]
    for anchor, (term, text) in GLOSSARY.items():
        out += [f'<a id="{anchor}"></a>**{term}**: {text}', ""]
    return out


def markdown(rows: Sequence[Mapping], plots: Sequence[Mapping], config: Mapping, summary: Summary) -> str:
    """The whole ``report.md``: the verdict in its first lines."""
    measured, fixed = split_by_design(rows)
    parts = sections(measured)
    matrix = implementation_matrix(measured)
    grids = subject_grids(measured, config)
    out = ["# DTD property report"] + verdict(summary) + [reading_guide(config.get("confidence")), ""]
    out += _changes(summary)
    out += ["## Answers", ""] + _answers(summary) + [""]
    out += _matrix(matrix) + _grids(grids, config, summary.causes) + _glance(summary)
    titles = [section_title(s, config) for s in parts]
    # in the order they follow, and only those this report has
    contents = (["[Figures](#figures)"] if plots else []) + [f"[{t}](#{_slug(t)})" for t in titles]
    if fixed:
        contents.append(f"[Rates fixed by design](#{_slug('Rates fixed by design')})")
    out += ["Sections: " + " · ".join(contents + ["[The run](#the-run)", "[Glossary](#glossary)"]), ""]
    out += _figures(plots)
    for section, heading in zip(parts, titles, strict=True):
        out += [f"## {heading}", ""]
        claim = opening(section.family, rows) if section.family else None  # all rows: fixed ones are answers too
        if claim:  # the findings' sections open with the paper's claim and the run's answer
            out += [claim, ""]
        for title, members in section.parts:
            if title:
                out += [f"### {heading} — {_part_title(section, title, config)}", ""]
            out += _HEADER + [_row_line(r, summary.causes) for r in members] + _examples(members) + [""]
    if fixed:
        out += ["## Rates fixed by design", "",
                "0 % or 100 % by construction, not findings of this run (still gated like every rate).", "",
                "| name | rate | interval | why |", "|---|---|---|---|"]
        out += [
            f'| <a id="{row_anchor(r["name"])}"></a>`{r["name"]}` '
            f'| {percent(r["rate"])} | {interval(r["ci_low"], r["ci_high"])} | {_cell(reason)} |'
            for r, reason in fixed
        ]
        out += _examples([r for r, _ in fixed]) + [""]
    out += _run(config) + _glossary()
    return "\n".join(out).rstrip("\n") + "\n"


def _slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")
