"""``report.md``: answers first, then the rules at a glance, the figures, every rate by section, the glossary.

The text is generated from the rows (:mod:`properties.summary`), grouped and
ordered by their keys (:mod:`properties.sections`); rows fixed by
construction (:func:`properties.keys.by_design`) get a table of their own,
apart from the measured findings.
"""

from __future__ import annotations

import html

from typing import Mapping, Optional, Sequence

from .papers import opening
from .sections import sections, split_by_design
from .summary import Summary, format_rate, interval, percent

__all__ = ["markdown", "GLOSSARY", "RUN_SETTINGS", "reading_guide", "percent", "interval"]

#: the glossary: anchor -> (term, explanation); the report links each term from its first use
GLOSSARY = {
    "f_k": ("f_k", "The network from layer k up to the explained output: f_k(a) = net_{>=k}(a)[output], a function of layer k's "
                   "input activations a. Roots of layer k are judged with f_k (f_0 = f, the whole network)."),
    "region": ("region and its closure", "The input's linear region of f_k: every input whose ReLUs of layers >= k (and the "
                                         "explained output) have the same on/off pattern as the input's; f_k is affine there, "
                                         "so a first-order Taylor expansion is exact. Its closure adds the boundary: a neuron "
                                         "whose pre-activation is within tolerance of 0 counts as matching either state."),
    "relevant": ("relevant vs trivial roots", "A neuron with upper relevance R_j = 0 gets the trivial root a itself (t = 0): it "
                                             "trivially keeps the input's gradient and region. Relevant roots are those of "
                                             "neurons with R_j != 0. Rates named .all include trivial roots (as the notebook "
                                             "did), .relevant exclude them."),
    "design-effect": ("design effect (deff)", "How much clustering (roots of one point, points of one network) inflates the "
                                             "variance over independent trials: the interval uses the effective sample size "
                                             "trials / deff, deff estimated from the cluster-robust variance over the clusters."),
    "interval": ("interval method", "wilson: the Wilson score interval for independent trials. wilson-clustered: the Wilson "
                                    "interval on the effective sample size trials / deff (see design effect). A rate is a "
                                    "regression when its interval and the baseline's do not overlap."),
    "by-design": ("by design", "A rate that is 0 % or 100 % by construction (for example a root on its own ReLU hinge, where "
                               "relu'(0) = 0, or a must-hold property the test asserts). Such rows are listed apart from the "
                               "measured findings."),
}

#: config entries that describe how the run was made (the rest are measured counts)
RUN_SETTINGS = ("confidence", "seed", "hypothesis_profile", "baseline", "update_baseline", "torch", "python", "seconds")
_HIDDEN = ("hypothesis_max_examples", "hypothesis_derandomize")


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _link(anchor: str, text: Optional[str] = None) -> str:
    return f"[{text or GLOSSARY[anchor][0]}](#{anchor})"


def reading_guide(confidence: Optional[float], link=_link) -> str:
    """One paragraph on how to read every rate, linking each glossary term at its first use."""
    level = "the run's" if confidence is None else f"{100 * confidence:g} %"
    return (
        f"Every rate is a share of trials with a {level} confidence interval ({link('interval', 'interval method')}, "
        f"{link('design-effect', 'design effect')}). Roots of layer k are judged with {link('f_k')}, inside the input's "
        f"{link('region', 'linear region and its closure')}; {link('relevant', 'relevant roots')} exclude the trivial roots of "
        f"neurons without relevance. Rates fixed {link('by-design', 'by design')} are listed apart from the findings."
    )


def _answers(summary: Summary) -> list[str]:
    out = []
    for a in summary.answers + [summary.gate]:
        names = ", ".join(f"`{n}`" for n in a.names[:8]) + (f" and {len(a.names) - 8} more" if len(a.names) > 8 else "")
        out.append(f"- **{a.question}** {a.verdict}: {a.detail}." + (f" ({names})" if names else ""))
    return out


def _glance(summary: Summary) -> list[str]:
    glance = summary.glance
    if glance is None:
        return []
    out = ["## Rules at a glance", "",
           "Over generated networks, roots of neurons carrying relevance (" + _link("relevant", "relevant roots") + "), all layers; "
           "rate [interval] in %. In-region root exists: exact LP; conservation: full backward with the rule's closed-form roots.", "",
           "| rule | " + " | ".join(glance.columns) + " |", "|---" * (len(glance.columns) + 1) + "|"]
    for rule in glance.rules:
        cells = [format_rate(row) if row else "—" for row in (glance.cells[rule][c] for c in glance.columns)]
        out.append(f"| {rule} | " + " | ".join(cells) + " |")
    return out + [""]


def _row_line(r: Mapping) -> str:
    base = r.get("baseline")
    method = r["interval"] + (f", {r['clusters']} clusters, deff {r['design_effect']:.2f}" if r.get("clusters") else "")
    status = f"**{r['status']}**" if r["status"] == "regression" else r["status"]
    return (f"| `{r['name']}` | {percent(r['rate'])} | {interval(r['ci_low'], r['ci_high'])} | {r['successes']} / {r['trials']} | "
            f"{method} | {percent(base['rate'] if base else None)} | {status} | {_cell(r['description'])} |")


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
    settings = [f"{key} {html.escape(str(config[key]))}" for key in RUN_SETTINGS if key in config]  # paths: no raw HTML
    counts = {k: v for k, v in config.items() if k not in RUN_SETTINGS and k not in _HIDDEN}
    out = ["## The run", "", "Settings: " + "; ".join(settings) + "." if settings else ""]
    if counts:
        out += ["", "| measured quantity (not gated) | value |", "|---|---|"]
        out += [f"| {_cell(k)} | {v} |" for k, v in sorted(counts.items())]
    return out + [""]


def _glossary() -> list[str]:
    out = ["## Glossary", ""]
    for anchor, (term, text) in GLOSSARY.items():
        out += [f'<a id="{anchor}"></a>**{term}**: {text}', ""]
    return out


def markdown(rows: Sequence[Mapping], plots: Sequence[Mapping], config: Mapping, summary: Summary) -> str:
    """The whole ``report.md``."""
    measured, fixed = split_by_design(rows)
    parts = sections(measured)
    out = ["# DTD property report", "", reading_guide(config.get("confidence")), "", "## Answers", ""]
    out += _answers(summary) + [""]
    out += _glance(summary)
    # in the order they follow, and only those this report has
    contents = (["[Figures](#figures)"] if plots else []) + [f"[{s.title}](#{_slug(s.title)})" for s in parts]
    if fixed:
        contents.append(f"[Rates fixed by design](#{_slug('Rates fixed by design')})")
    out += ["Sections: " + " · ".join(contents + ["[The run](#the-run)", "[Glossary](#glossary)"]), ""]
    out += _figures(plots)
    for section in parts:
        out += [f"## {section.title}", ""]
        claim = opening(section.family, rows) if section.family else None  # all rows: fixed ones are answers too
        if claim:  # the findings' sections open with the paper's claim and the run's answer
            out += [claim, ""]
        for title, members in section.parts:
            if title:
                out += [f"### {section.title} — {title}", ""]
            out += _HEADER + [_row_line(r) for r in members] + _examples(members) + [""]
    if fixed:
        out += ["## Rates fixed by design", "",
                "0 % or 100 % by construction, not findings of this run (still gated like every rate).", "",
                "| name | rate | interval | why |", "|---|---|---|---|"]
        out += [f"| `{r['name']}` | {percent(r['rate'])} | {interval(r['ci_low'], r['ci_high'])} | {_cell(reason)} |" for r, reason in fixed]
        out += _examples([r for r, _ in fixed]) + [""]
    out += _run(config) + _glossary()
    return "\n".join(out).rstrip("\n") + "\n"


def _slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")
