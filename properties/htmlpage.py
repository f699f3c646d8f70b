"""``report.html``: one self-contained page (inline CSS and JS, PNGs as data URIs, no external resource).

The page holds the answers-first summary, the rules at a glance, the figures
and a filterable, sortable table of every measured rate (name, description,
rate, interval, baseline, status; regressions highlighted), then the rates
fixed by design in a table of their own, the run and the glossary.  It opens
offline: nothing on it refers to another file or to a URL.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Mapping, Optional, Sequence

from .papers import opening
from .markdown import GLOSSARY, RUN_SETTINGS, reading_guide
from .sections import sections, split_by_design
from .summary import Summary, format_rate, interval, percent

__all__ = ["html_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1300px;padding:1em 2em;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.guide{color:#444}.verdict{font-weight:600}
ul.answers li{margin:.35em 0}ul.answers code{font-size:.85em;color:#555}td code{font-size:1em;overflow-wrap:anywhere}
table{border-collapse:collapse;font-size:.85em;width:100%;table-layout:auto}table.rates td:nth-child(2){min-width:16em}th,td{border:1px solid #ddd;padding:.25em .45em;text-align:left;vertical-align:top}
th{background:#f3f3f5;cursor:pointer;user-select:none;position:sticky;top:0}th.sorted-asc:after{content:" \\25B2"}th.sorted-desc:after{content:" \\25BC"}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.regression td{background:#fde2e1}tr.regression td.status{color:#b00020;font-weight:700}tr.new td.status{color:#8a5a00;font-weight:600}
.gate-ok{color:#0a7a2f}.gate-bad{color:#b00020}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:760px}
.controls{margin:.6em 0;display:flex;gap:1em;align-items:center;flex-wrap:wrap}.controls input[type=search]{width:28em;padding:.3em}
.section-row td{background:#fafafa;font-weight:600}pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:.85em}
details summary{cursor:pointer;color:#555}.count{color:#555}
"""

_JS = """
(function(){
  function cellValue(td){var v=td.getAttribute('data-sort');if(v!==null&&v!==''){var f=parseFloat(v);if(!isNaN(f))return f;}return td.textContent.trim().toLowerCase();}
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
  var text=document.getElementById('filter-text'),status=document.getElementById('filter-status'),section=document.getElementById('filter-section'),shown=document.getElementById('filter-count');
  function apply(){
    var words=text.value.toLowerCase().split(/\\s+/).filter(Boolean),want=status.value,part=section.value,n=0,total=0;
    document.querySelectorAll('table.rates tbody tr').forEach(function(tr){
      total++;var hay=tr.textContent.toLowerCase();
      var ok=words.every(function(w){return hay.indexOf(w)>=0;})&&(want===''||tr.getAttribute('data-status')===want)&&(part===''||tr.getAttribute('data-section')===part);
      tr.style.display=ok?'':'none';if(ok)n++;
    });
    shown.textContent=n+' of '+total+' rates shown';
  }
  text.addEventListener('input',apply);status.addEventListener('change',apply);section.addEventListener('change',apply);apply();
})();
"""


def _link(anchor: str, text: Optional[str] = None) -> str:
    return f'<a href="#{anchor}">{escape(text or GLOSSARY[anchor][0])}</a>'


def _answers(summary: Summary) -> str:
    items = []
    for a in summary.answers:
        names = ", ".join(f"<code>{escape(n)}</code>" for n in a.names[:8]) + (f" and {len(a.names) - 8} more" if len(a.names) > 8 else "")
        items.append(f'<li><b>{escape(a.question)}</b> <span class="verdict">{escape(a.verdict)}</span>: {escape(a.detail)}.'
                     + (f" ({names})" if names else "") + "</li>")
    gate = summary.gate
    style = "gate-bad" if "regression" in gate.verdict else "gate-ok"
    items.append(f'<li><b>{escape(gate.question)}</b> <span class="verdict {style}">{escape(gate.verdict)}</span>: {escape(gate.detail)}.</li>')
    return '<ul class="answers">' + "".join(items) + "</ul>"


def _glance(summary: Summary) -> str:
    glance = summary.glance
    if glance is None:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in ["rule"] + glance.columns)
    body = ""
    for rule in glance.rules:
        cells = "".join(f'<td class="num">{escape(format_rate(r)) if r else "—"}</td>' for r in (glance.cells[rule][c] for c in glance.columns))
        body += f"<tr><td>{escape(rule)}</td>{cells}</tr>"
    return (f'<h2 id="glance">Rules at a glance</h2><p>Over generated networks, {_link("relevant", "relevant roots")}, all layers; '
            "rate [interval] in %.</p>" f'<table class="glance"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _figures(plots: Sequence[Mapping], images: Mapping[str, bytes]) -> str:
    if not plots:
        return ""
    out = ['<h2 id="figures">Figures</h2>']
    for plot in plots:
        caption = escape(plot.get("caption", ""))
        if plot.get("text"):
            out.append(f'<figure><h3>{escape(plot["title"])}</h3><p>{escape(plot["text"])}</p><figcaption>{caption}</figcaption></figure>')
        else:
            data = base64.b64encode(images[plot["file"]]).decode("ascii")
            out.append(f'<figure><img alt="{escape(plot["title"])}" src="data:image/png;base64,{data}">'
                       f"<figcaption><b>{escape(plot['title'])}.</b> {caption}</figcaption></figure>")
    return "".join(out)


def _findings(rows: Sequence[Mapping]) -> str:
    """The findings' families: each paper's claim beside the run's answer (only families with rows)."""
    paragraphs = [(section.title, opening(section.family, rows)) for section in sections(rows) if section.family]
    paragraphs = [(title, text) for title, text in paragraphs if text]
    if not paragraphs:
        return ""
    return ('<h2 id="findings">The field\'s findings</h2>'
            + "".join(f"<p><b>{escape(title)}.</b> {escape(text)}</p>" for title, text in paragraphs))


def _sort_value(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def _example(r: Mapping) -> str:
    if not r.get("example"):
        return ""
    return f"<details><summary>counterexample</summary><pre>{escape(str(r['example']))}</pre></details>"


def _rates_table(rows: Sequence[Mapping]) -> str:
    found = sections(rows)
    head = "".join(f"<th>{h}</th>" for h in ("section", "name", "description", "rate", "interval", "successes / trials", "baseline", "status"))
    body = []
    for section in found:
        for part, members in section.parts:
            where = section.family or "other"
            for r in members:
                base = r.get("baseline") or {}
                body.append(
                    f'<tr class="{escape(r["status"])}" data-status="{escape(r["status"])}" data-section="{escape(where)}"><td>{escape(where)}</td>'
                    f"<td><code>{escape(r['name'])}</code></td><td>{escape(r['description'])}{_example(r)}</td>"
                    f'<td class="num" data-sort="{_sort_value(r["rate"])}">{percent(r["rate"])}</td>'
                    f'<td class="num" data-sort="{_sort_value(r["ci_low"])}">{interval(r["ci_low"], r["ci_high"])}</td>'
                    f'<td class="num" data-sort="{r["trials"]}">{r["successes"]} / {r["trials"]}</td>'
                    f'<td class="num" data-sort="{_sort_value(base.get("rate"))}">{percent(base.get("rate"))} {interval(base.get("ci_low"), base.get("ci_high")) if base else ""}</td>'
                    f'<td class="status">{escape(r["status"])}</td></tr>'
                )
    controls = ('<div class="controls"><input type="search" id="filter-text" placeholder="filter: words in name, section or description">'
                '<label>status <select id="filter-status"><option value="">any</option><option>ok</option><option>regression</option>'
                '<option>new</option></select></label><label>section <select id="filter-section"><option value="">any</option>'
                + "".join(f"<option>{escape(s.family or 'other')}</option>" for s in found)
                + '</select></label><span class="count" id="filter-count"></span></div>')
    return (f'<h2 id="rates">Every measured rate</h2><p>Click a column to sort; type words to filter, or pick a status or section. Regressions are highlighted.</p>{controls}'
            f'<table class="sortable rates"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _fixed_table(fixed: Sequence) -> str:
    if not fixed:
        return ""
    rows = "".join(
        f'<tr class="{escape(r["status"])}"><td><code>{escape(r["name"])}</code></td><td class="num" data-sort="{_sort_value(r["rate"])}">{percent(r["rate"])}</td>'
        f'<td class="num">{interval(r["ci_low"], r["ci_high"])}</td><td>{escape(reason)}{_example(r)}</td><td class="status">{escape(r["status"])}</td></tr>'
        for r, reason in fixed
    )
    return ('<h2 id="by-design-rates">Rates fixed by design</h2><p>0 % or 100 % by construction, not findings of this run '
            "(still gated like every rate).</p>"
            f'<table class="sortable"><thead><tr><th>name</th><th>rate</th><th>interval</th><th>why</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>')


def _run(config: Mapping) -> str:
    settings = "; ".join(f"{escape(k)} {escape(str(config[k]))}" for k in RUN_SETTINGS if k in config)
    counts = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{escape(str(v))}</td></tr>" for k, v in sorted(config.items())
                     if k not in RUN_SETTINGS and not k.startswith("hypothesis_"))
    table = f'<table class="sortable"><thead><tr><th>measured quantity (not gated)</th><th>value</th></tr></thead><tbody>{counts}</tbody></table>' if counts else ""
    return f'<h2 id="run">The run</h2><p>Settings: {settings}.</p>{table}'


def _glossary() -> str:
    items = "".join(f'<dt id="{a}"><b>{escape(term)}</b></dt><dd>{escape(text)}</dd>' for a, (term, text) in GLOSSARY.items())
    return f'<h2 id="glossary">Glossary</h2><dl>{items}</dl>'


def html_page(rows: Sequence[Mapping], plots: Sequence[Mapping], images: Mapping[str, bytes], config: Mapping, summary: Summary) -> str:
    """The whole ``report.html``; ``images`` maps each plot's file name to its PNG bytes."""
    measured, fixed = split_by_design(rows)
    present = (("glance", "rules at a glance", summary.glance is not None), ("figures", "figures", bool(plots)),
               ("rates", "every rate", True), ("by-design-rates", "fixed by design", bool(fixed)), ("run", "the run", True),
               ("glossary", "glossary", True))
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t, shown in present if shown)  # only sections the page has
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>DTD property report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        f'<h1>DTD property report</h1><p class="guide">{reading_guide(config.get("confidence"), _link)}</p><p>{nav}</p>'
        f'<h2 id="answers">Answers</h2>{_answers(summary)}{_glance(summary)}{_figures(plots, images)}'
        f"{_findings(rows)}{_rates_table(measured)}{_fixed_table(fixed)}{_run(config)}{_glossary()}"
        f"<script>{_JS}</script></body></html>\n"
    )
