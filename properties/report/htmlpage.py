"""``report.html``: one self-contained page (inline CSS and JS, PNGs as data URIs, no external resource).

The page opens with the gate's verdict (linking the offending rows), then the
changes since the baseline, the answers, the implementation x property
matrix and the subjects' layer x question grids (cells coloured by rate, the
interval on hover and below, breaks outlined, the relevance accounting as a
stacked bar per layer), the rules at a glance, the figures and a filterable,
sortable table of every measured rate (regressions highlighted), then the
rates fixed by design in a table of their own, the run and the glossary.  It
opens offline: nothing on it refers to another file or to a URL.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from itertools import pairwise

from .markdown import GLOSSARY, RUN_SETTINGS, VERDICT_LINKS, moved, reading_guide, setting
from .papers import opening
from .sections import sections, split_by_design
from .summary import Answer, Summary, format_rate, interval, percent, row_anchor, scale_word
from .tables import Matrix, SubjectGrid, implementation_matrix, is_break, subject_grids

__all__ = ["html_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1300px;padding:1em 2em;
     color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.guide{color:#444}.verdict{font-weight:600}
ul.answers li{margin:.35em 0}ul.answers code{font-size:.85em;color:#555}td code{font-size:1em;overflow-wrap:anywhere}
table{border-collapse:collapse;font-size:.85em;width:100%;table-layout:auto}table.rates td:nth-child(2){min-width:16em}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#f3f3f5;cursor:pointer;user-select:none;position:sticky;top:0}th.sorted-asc:after{content:" \\25B2"}
th.sorted-desc:after{content:" \\25BC"}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.regression td,tr.below_floor td{background:#fde2e1}
tr.regression td.status,tr.below_floor td.status{color:#b00020;font-weight:700}
tr.new td.status{color:#8a5a00;font-weight:600}
.gate-ok{color:#0a7a2f}.gate-bad{color:#b00020}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:760px}
.controls{margin:.6em 0;display:flex;gap:1em;align-items:center;flex-wrap:wrap}
.controls input[type=search]{width:28em;padding:.3em}
.section-row td{background:#fafafa;font-weight:600}pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:.85em}
details summary{cursor:pointer;color:#555}.count{color:#555}
.verdict-line{font-size:1.15em;padding:.5em .8em;border-radius:4px;margin:.4em 0}
.verdict-line.pass{background:#e3f4e8;color:#0a5a22}
.verdict-line.fail{background:#fde2e1;color:#8a0018}.verdict-line a{color:inherit}
.verdict-line .offenders{font-size:.8em;font-weight:400}
ul.answers ul{margin:.1em 0 .3em 0}.cause{color:#8a4b00;font-size:.92em}
table.heat td.cell{text-align:center;white-space:nowrap;font-variant-numeric:tabular-nums;min-width:4.8em;
                   font-size:.92em}
table.heat th{font-size:.85em;font-weight:600}
table.heat td.cell small{display:block;color:#333;font-size:.8em}
table.heat td.break{outline:2px solid #b00020;outline-offset:-2px;font-weight:700}
table.heat td.na{color:#888;background:#f7f7f7;text-align:center}table.heat{width:auto}table.heat th{cursor:default}
.legend-swatch{display:inline-block;width:1.2em;height:.8em;vertical-align:middle;border:1px solid #ccc}
.stack{display:flex;width:11em;height:.9em;border:1px solid #bbb;background:#fff}.stack span{display:block;height:100%}
.stack .passed{background:#4c9a5b}.stack .lost{background:#c0392b}.bias{height:.35em;background:#8e7cc3;margin-top:2px}
tr:target td{box-shadow:inset 0 0 0 2px #1f6feb}
"""

_JS = """
(function(){
  function cellValue(td){
    var v=td.getAttribute('data-sort');if(v!==null&&v!==''){var f=parseFloat(v);if(!isNaN(f))return f;}
    return td.textContent.trim().toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,index){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('sorted-asc');
        table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
        th.classList.add(asc?'sorted-asc':'sorted-desc');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){var x=cellValue(a.cells[index]),y=cellValue(b.cells[index]);
          if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var text=document.getElementById('filter-text'),status=document.getElementById('filter-status'),
      section=document.getElementById('filter-section'),shown=document.getElementById('filter-count');
  function apply(){
    var words=text.value.toLowerCase().split(/\\s+/).filter(Boolean),want=status.value,part=section.value,n=0,total=0;
    document.querySelectorAll('table.rates tbody tr').forEach(function(tr){
      total++;var hay=tr.textContent.toLowerCase();
      var ok=words.every(function(w){return hay.indexOf(w)>=0;})&&(want===''||tr.getAttribute('data-status')===want)
             &&(part===''||tr.getAttribute('data-section')===part);
      tr.style.display=ok?'':'none';if(ok)n++;
    });
    shown.textContent=n+' of '+total+' rates shown';
  }
  text.addEventListener('input',apply);status.addEventListener('change',apply);section.addEventListener('change',apply);apply();
})();
"""


def _link(anchor: str, text: str | None = None) -> str:
    return f'<a href="#{anchor}">{escape(text or GLOSSARY[anchor][0])}</a>'


#: the colour scale of rate cells: (share, RGB), interpolated linearly (red at 0, amber at 50 %, green at 100 %)
_COLOURS = ((0.0, (244, 199, 195)), (0.5, (255, 236, 179)), (1.0, (200, 230, 201)))


def rate_colour(rate: float | None) -> str:
    """The background of a cell holding ``rate`` (a CSS ``rgb(...)``)."""
    if rate is None:
        return "#f7f7f7"
    for (low, a), (high, b) in pairwise(_COLOURS):
        if rate <= high:
            t = (rate - low) / (high - low)
            return "rgb({},{},{})".format(*(round(x + t * (y - x)) for x, y in zip(a, b, strict=True)))
    return "rgb({},{},{})".format(*_COLOURS[-1][1])


def _row_link(name: str) -> str:
    return f'<a href="#{row_anchor(name)}"><code>{escape(name)}</code></a>'


def _verdict(summary: Summary) -> str:
    gate = summary.gate
    offenders = []
    for status, names in gate.failing.items():
        more = f" and {len(names) - VERDICT_LINKS} more" if len(names) > VERDICT_LINKS else ""
        offenders.append(f"{escape(status)}: " + ", ".join(_row_link(n) for n in names[:VERDICT_LINKS]) + more)
    listed = f'<div class="offenders">{"<br>".join(offenders)}</div>' if offenders else ""
    return (f'<div id="verdict" class="verdict-line {"pass" if gate.passed else "fail"}">'
            f"<b>{escape(gate.verdict)}</b>{listed}</div>")


def _changes(summary: Summary) -> str:
    if not summary.changes:
        return ""
    body = "".join(
        f'<tr class="{escape(r["status"])}"><td>{_row_link(r["name"])}</td>'
        f'<td class="num">{escape(format_rate(r))}</td><td class="num">{escape(format_rate(r["baseline"]))}</td>'
        f'<td class="num">{100 * (r["rate"] - r["baseline"]["rate"]):+.2f} points</td>'
        f'<td class="status">{escape(r["status"])}</td></tr>'
        for r in summary.changes)
    return (f'<h2 id="changes">Changes since the baseline</h2><p>{moved(len(summary.changes))} whose rate moved most '
            "(failing rows first); rate [interval] in %.</p><table><thead><tr><th>name</th><th>now</th>"
            f"<th>baseline</th><th>change</th><th>status</th></tr></thead><tbody>{body}</tbody></table>")


def _answer_line(a: Answer) -> str:
    causes = "".join(f'<div class="cause">{escape(c)}</div>' for c in a.causes)
    return f'<span class="verdict">{escape(a.verdict)}</span>: {escape(a.detail)}.{causes}'


def _answers(summary: Summary) -> str:
    items, last = [], None
    for a in summary.answers:
        if a.label is None:
            items.append(f"<li><b>{escape(a.question)}</b> {_answer_line(a)}</li>")
        else:
            if a.question != last:
                items.append(f"<li><b>{escape(a.question)}</b><ul>")
            items.append(f"<li>{escape(a.label)}: {_answer_line(a)}</li>")
        following = summary.answers[summary.answers.index(a) + 1] if a is not summary.answers[-1] else None
        if a.label is not None and (following is None or following.question != a.question or following.label is None):
            items.append("</ul></li>")
        last = a.question
    return '<ul class="answers">' + "".join(items) + "</ul>"


def _heat_cell(r: Mapping | None, breaks: bool = True) -> str:
    """A table cell coloured by the row's rate, its interval on hover and below; breaks outlined (where a property must
    hold: ``breaks``); n/a without a row."""
    if r is None:
        return '<td class="na" title="the property does not apply">n/a</td>'
    if r.get("rate") is None:
        return '<td class="na" title="0 trials">no data</td>'
    tip = f"{r['name']}: {format_rate(r)}, {r['successes']} / {r['trials']} trials, {r['status']}"
    style = "cell break" if breaks and is_break(r) else "cell"
    return (f'<td class="{style}" style="background:{rate_colour(r["rate"])}" title="{escape(tip)}">'
            f'<a href="#{row_anchor(r["name"])}" style="color:inherit;text-decoration:none">{percent(r["rate"])}'
            f"<small>{interval(r['ci_low'], r['ci_high'])}</small></a></td>")


def _colour_legend(breaks: bool = True) -> str:
    swatches = " ".join(f'<span class="legend-swatch" style="background:{rate_colour(v)}"></span> {100 * v:g} %'
                        for v in (0, 0.25, 0.5, 0.75, 1))
    outlined = "; outlined: a break (a failing trial)" if breaks else ""
    return f'<p class="count">Cell colour by rate: {swatches}{outlined}; hover a cell for its counts.</p>'


def _matrix(matrix: Matrix | None) -> str:
    if matrix is None:
        return ""
    head = "".join(f"<th>{escape(Matrix.title(c))}</th>" for c in matrix.columns)
    body = "".join(f"<tr><td>{escape(name)}</td>"
                   + "".join(_heat_cell(matrix.cells[name][c]) for c in matrix.columns) + "</tr>"
                   for name in matrix.implementations)
    return ('<h2 id="implementations">Implementations x properties</h2><p>Each cell: the share of trials in which the '
            "property held, its interval below; n/a: the property does not apply to the implementation's rule.</p>"
            + _colour_legend()
            + f'<table class="heat"><thead><tr><th>implementation</th>{head}</tr></thead><tbody>{body}</tbody></table>')


def _stack(grid: SubjectGrid, layer: int) -> str:
    shares = grid.shares(layer)
    if shares is None:
        return "<td>—</td>"
    passed, lost, bias = (max(0.0, min(1.0, shares[k])) for k in ("passed on", "lost (no root)", "bias share"))
    tip = "; ".join(f"{label} {100 * value:.1f} %" for label, value in shares.items())
    return (f'<td title="{escape(tip)}"><div class="stack"><span class="passed" style="width:{100 * passed:.1f}%">'
            f'</span><span class="lost" style="width:{100 * lost:.1f}%"></span></div>'
            f'<div class="bias" style="width:{11 * abs(bias):.2f}em"></div><small>{escape(tip)}</small></td>')


def _causes_of(names: Sequence[str], causes: Mapping) -> str:
    found = [(n, c) for n in names for c in causes.get(n, [])]
    return "".join(f'<div class="cause"><code>{escape(n)}</code> {escape(c)}</div>' for n, c in found)


def _grids(grids: list, config: Mapping, causes: Mapping) -> str:
    if not grids:
        return ""
    out = ['<h2 id="subject-grids">Subjects: layers x questions</h2><p>Per subject and rule: the share of the '
           "valid roots of relevance-carrying neurons for which each question holds, per layer; the bar: where "
           'the relevance reaching the layer went (<span class="legend-swatch" style="background:#4c9a5b">'
           '</span> passed on, <span class="legend-swatch" style="background:#c0392b"></span> lost to missing '
           'roots; the thin <span class="legend-swatch" style="background:#8e7cc3"></span> line: the bias '
           "share LRP-0 with biases would keep).</p>"
           + _colour_legend(breaks=False)]
    yours = set(config.get("your_subjects") or ())
    for grid in grids:
        out.append(f"<h3>Subject {escape(grid.subject)}{' (yours)' if grid.subject in yours else ''}, "
                   f"rule {escape(grid.rule)}</h3>")
        if grid.conserved is not None:
            out.append(f"<p>Conservation: <b>{escape(scale_word(grid.conserved))}</b>, "
                       f"{escape(format_rate(grid.conserved))} of {grid.conserved['trials']} points.</p>")
            out.append(_causes_of([grid.conserved["name"]], causes))
        head = "".join(f"<th>{escape(q)}</th>" for q in grid.questions)
        body = "".join(
            f"<tr><td>{k}{(' <small>' + escape(grid.names[k]) + '</small>') if grid.names.get(k) else ''}</td>"
            + "".join(_heat_cell(grid.cells[k][q], breaks=False) for q in grid.questions) + _stack(grid, k) + "</tr>"
            for k in grid.layers)
        out.append(f'<table class="heat"><thead><tr><th>layer</th>{head}<th>relevance '
                   f"from above</th></tr></thead><tbody>{body}</tbody></table>")
        out.append(_causes_of([r["name"] for k in grid.layers for r in grid.cells[k].values() if r is not None],
                              causes))
    return "".join(out)


def _glance(summary: Summary) -> str:
    glance = summary.glance
    if glance is None:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in ["rule"] + glance.columns)
    body = ""
    for rule in glance.rules:
        cells = "".join(f'<td class="num">{escape(format_rate(r)) if r else "—"}</td>'
                        for r in (glance.cells[rule][c] for c in glance.columns))
        body += f"<tr><td>{escape(rule)}</td>{cells}</tr>"
    return ('<h2 id="glance">Rules at a glance</h2><p>Over generated networks, '
            f'{_link("relevant", "relevant roots")}, all layers; rate [interval] in %.</p>'
            f'<table class="glance"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _figures(plots: Sequence[Mapping], images: Mapping[str, bytes]) -> str:
    if not plots:
        return ""
    out = ['<h2 id="figures">Figures</h2>']
    for plot in plots:
        caption = escape(plot.get("caption", ""))
        if plot.get("text"):
            out.append(f'<figure><h3>{escape(plot["title"])}</h3><p>{escape(plot["text"])}</p>'
                       f"<figcaption>{caption}</figcaption></figure>")
        else:
            data = base64.b64encode(images[plot["file"]]).decode("ascii")
            out.append(f'<figure><img alt="{escape(plot["title"])}" src="data:image/png;base64,{data}">'
                       f"<figcaption><b>{escape(plot['title'])}.</b> {caption}</figcaption></figure>")
    return "".join(out)


def _findings(rows: Sequence[Mapping]) -> str:
    """The findings' families: each paper's claim beside the run's answer (only families with rows)."""
    opened = [(section.title, opening(section.family, rows)) for section in sections(rows) if section.family]
    paragraphs = [(title, text) for title, text in opened if text]
    if not paragraphs:
        return ""
    return ('<h2 id="findings">The field\'s findings</h2>'
            + "".join(f"<p><b>{escape(title)}.</b> {escape(text)}</p>" for title, text in paragraphs))


def _sort_value(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _example(r: Mapping) -> str:
    if not r.get("example"):
        return ""
    return f"<details><summary>counterexample</summary><pre>{escape(str(r['example']))}</pre></details>"


def _rates_table(rows: Sequence[Mapping], causes: Mapping) -> str:
    found = sections(rows)
    head = "".join(f"<th>{h}</th>" for h in ("section", "name", "description", "rate", "interval", "successes / trials",
                                             "baseline", "status"))
    body = []
    for section in found:
        for _, members in section.parts:
            where = section.family or "other"
            for r in members:
                base = r.get("baseline") or {}
                why = "".join(f'<div class="cause">{escape(c)}</div>'
                              for c in [*r.get("floor", ()), *causes.get(r["name"], [])])
                body.append(
                    f'<tr class="{escape(r["status"])}" data-status="{escape(r["status"])}" '
                    f'data-section="{escape(where)}" id="{row_anchor(r["name"])}"><td>{escape(where)}</td>'
                    f"<td><code>{escape(r['name'])}</code></td><td>{escape(r['description'])}{why}{_example(r)}</td>"
                    f'<td class="num" data-sort="{_sort_value(r["rate"])}">{percent(r["rate"])}</td>'
                    f'<td class="num" data-sort="{_sort_value(r["ci_low"])}">{interval(r["ci_low"], r["ci_high"])}</td>'
                    f'<td class="num" data-sort="{r["trials"]}">{r["successes"]} / {r["trials"]}</td>'
                    f'<td class="num" data-sort="{_sort_value(base.get("rate"))}">{percent(base.get("rate"))} '
                    f'{interval(base.get("ci_low"), base.get("ci_high")) if base else ""}</td>'
                    f'<td class="status">{escape(r["status"])}</td></tr>'
                )
    controls = ('<div class="controls">'
                '<input type="search" id="filter-text" placeholder="filter: words in name, section or description">'
                '<label>status <select id="filter-status"><option value="">any</option><option>ok</option>'
                "<option>regression</option><option>below_floor</option><option>new</option></select></label>"
                '<label>section <select id="filter-section"><option value="">any</option>'
                + "".join(f"<option>{escape(s.family or 'other')}</option>" for s in found)
                + '</select></label><span class="count" id="filter-count"></span></div>')
    return ('<h2 id="rates">Every measured rate</h2><p>Click a column to sort; type '
            "words to filter, or pick a status or section. Regressions and rows below "
            f'a floor are highlighted.</p>{controls}<table class="sortable rates">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _fixed_table(fixed: Sequence) -> str:
    if not fixed:
        return ""
    rows = "".join(
        f'<tr class="{escape(r["status"])}" id="{row_anchor(r["name"])}"><td><code>{escape(r["name"])}</code></td>'
        f'<td class="num" data-sort="{_sort_value(r["rate"])}">{percent(r["rate"])}</td>'
        f'<td class="num">{interval(r["ci_low"], r["ci_high"])}</td><td>{escape(reason)}{_example(r)}</td>'
        f'<td class="status">{escape(r["status"])}</td></tr>'
        for r, reason in fixed
    )
    return ('<h2 id="by-design-rates">Rates fixed by design</h2><p>0 % or 100 % by construction, not findings '
            'of this run (still gated like every rate).</p><table class="sortable"><thead><tr><th>name</th>'
            f"<th>rate</th><th>interval</th><th>why</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>")


def _run(config: Mapping) -> str:
    settings = "; ".join(escape(setting(config, k)) for k in RUN_SETTINGS if k in config)
    counts = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{escape(str(v))}</td></tr>"
                     for k, v in sorted(config.items())
                     if k not in RUN_SETTINGS and not k.startswith("hypothesis_"))
    table = ('<table class="sortable"><thead><tr><th>measured quantity (not '
             f"gated)</th><th>value</th></tr></thead><tbody>{counts}</tbody></table>") if counts else ""
    return f'<h2 id="run">The run</h2><p>Settings: {settings}.</p>{table}'


def _glossary() -> str:
    items = "".join(f'<dt id="{a}"><b>{escape(term)}</b></dt><dd>{escape(text)}</dd>'
                    for a, (term, text) in GLOSSARY.items())
    return f'<h2 id="glossary">Glossary</h2><dl>{items}</dl>'


def html_page(rows: Sequence[Mapping], plots: Sequence[Mapping], images: Mapping[str, bytes], config: Mapping,
              summary: Summary) -> str:
    """The whole ``report.html``; ``images`` maps each plot's file name to its PNG bytes.  The verdict comes first."""
    measured, fixed = split_by_design(rows)
    matrix = implementation_matrix(measured)
    grids = subject_grids(measured, config)
    present = (("changes", "changes since the baseline", bool(summary.changes)), ("answers", "answers", True),
               ("implementations", "implementations x properties", matrix is not None),
               ("subject-grids", "subjects: layers x questions", bool(grids)),
               ("glance", "rules at a glance", summary.glance is not None), ("figures", "figures", bool(plots)),
               ("rates", "every rate", True), ("by-design-rates", "fixed by design", bool(fixed)),
               ("run", "the run", True), ("glossary", "glossary", True))
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t, shown in present if shown)  # only sections the page has
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>DTD property report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        f'<h1>DTD property report</h1>{_verdict(summary)}'
        f'<p class="guide">{reading_guide(config.get("confidence"), _link)}</p><p>{nav}</p>'
        f'{_changes(summary)}<h2 id="answers">Answers</h2>{_answers(summary)}{_matrix(matrix)}'
        f"{_grids(grids, config, summary.causes)}"
        f"{_glance(summary)}{_figures(plots, images)}"
        f"{_findings(rows)}{_rates_table(measured, summary.causes)}{_fixed_table(fixed)}{_run(config)}{_glossary()}"
        f"<script>{_JS}</script></body></html>\n"
    )
