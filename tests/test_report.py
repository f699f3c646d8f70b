"""The report a researcher reads: summary from the data, natural order, by-design rows, figures, report.html."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser

import pytest

from properties.measure.keys import SEED_TOP_LAYER, RateKey, by_design
from properties.report import figures, render_report, row, table_legend
from properties.report.sections import OTHER, natural_key, row_key, sections, split_by_design
from properties.report.summary import SCALE_TEXT, changes, format_rate, row_anchor, scale_word, summarize
from properties.report.tables import implementation_matrix, subject_grids

CONFIDENCE = 0.99
CONFIG = {"confidence": CONFIDENCE, "seed": 0, "hypothesis_profile": "ci", "hypothesis_max_examples": 30,
          "roots evaluated (z+, generated networks)": 1234}


def _row(name_or_key, successes, trials, *, baseline=None, keyed=True):
    """A report row as the plugin builds it (with the key's fields, or ``"key": None`` as for a plain name)."""
    from properties.measure.stats import Rate

    key = name_or_key if isinstance(name_or_key, RateKey) else None
    name = str(key) if key is not None else name_or_key
    return row(name, Rate(successes, trials, CONFIDENCE), f"description of {name}", baseline, key if keyed else None)


def _run_rows(zero_output_successes=0):
    """A small fake run: the notebook's questions, three rules over generated networks, agreement, full backward."""
    K = RateKey
    rows = [
        _row(K("notebook", "zero_output"), zero_output_successes, 10000),
        _row(K("notebook", "output_unchanged"), 4216, 10000),
        _row(K("notebook", "gradient_match", unit="roots"), 8838, 10000),
        _row(K("notebook", "gradient_match", unit="points"), 426, 1000),
        _row(K("notebook", "gradient_match", layer=SEED_TOP_LAYER, unit="points"), 0, 1000),
        _row(K("notebook", "gradient_match", layer=2, unit="points"), 903, 1000),
        _row(K("full_backward", "conserved", finder="z+"), 69, 100),
        _row(K("agreement", "points", subject="zennit", rule="z+"), 300, 300),
        _row(K("agreement", "agree_where_conditioned", subject="zennit", rule="z+"), 280, 280),
    ]
    for rule, gradient in (("gamma10", 74), ("z+", 67), ("gamma0_1", 62), ("gamma1", 69)):
        rows.append(_row(K("generated", "gradient_match", rule=rule, subset="relevant"), gradient, 100))
        rows.append(_row(K("generated", "zero_output", rule=rule, subset="relevant"), 8, 100))
        for layer in (10, 2, 0):
            rows.append(_row(K("generated", "gradient_match", rule=rule, layer=layer), 50 + layer, 100))
    rows.append(_row(K("region", "root_exists", rule="z+"), 92, 100))
    return rows


def _render(rows, plots=()):
    return render_report(rows, list(plots), CONFIG)


# --------------------------------------------------------------------------- summary from the data
def _answer(summary, fragment):
    found = [a for a in summary.answers if fragment in a.question]
    assert len(found) == 1, [a.question for a in summary.answers]
    return found[0]


def test_summary_sentence_follows_the_rate():
    never = _answer(summarize(_run_rows(0)), "set the explained output to zero")
    some = _answer(summarize(_run_rows(5000)), "set the explained output to zero")
    assert never.verdict == "Never" and never.detail.startswith("0.00 % [")
    assert some.verdict == "Sometimes" and some.detail.startswith("50.00 % [")
    assert never.detail != some.detail
    assert never.names == some.names == ["notebook.zero_output"]


def test_summary_numbers_are_the_rows_numbers():
    rows = _run_rows(17)
    by_name = {r["name"]: r for r in rows}
    summary = summarize(rows, CONFIDENCE)
    assert summary.answers
    for answer in summary.answers:
        for name in answer.names:
            r = by_name[name]
            expected = f"{100 * r['rate']:.2f} % [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]"
            assert expected in answer.detail, (name, answer.detail)
    markdown = _render(rows)["report.md"].decode()
    head = markdown.split("## Rules at a glance")[0]
    for answer in summary.answers:
        assert answer.detail in head


def test_summary_leaves_out_rows_fixed_by_design_and_reports_the_gate():
    rows = _run_rows()
    summary = summarize(rows)
    named = {n for a in summary.answers for n in a.names}
    assert "notebook.layer3.gradient_match.points" not in named
    assert summary.gate.passed and summary.gate.verdict.startswith("Gate: ok")  # fake rows have no baseline: all new
    assert f"{len(rows)} new" in summary.gate.verdict and len(summary.gate.names) == len(rows)
    baseline = {"rate": 0.9, "ci_low": 0.89, "ci_high": 0.91}
    regressed = rows + [_row(RateKey("region", "root_exists", rule="w2"), 10, 100, baseline=baseline)]
    gate = summarize(regressed).gate
    assert not gate.passed and gate.verdict.startswith("Gate: FAILED — 1 regression (")
    assert gate.failing == {"regression": ["region.w2.root_exists"]} and gate.names[0] == "region.w2.root_exists"


def test_rules_at_a_glance_cells_are_found_by_key():
    glance = summarize(_run_rows()).glance
    assert glance.rules == ["gamma0_1", "gamma1", "gamma10", "z+"]
    assert glance.cells["z+"]["gradient match"]["name"] == "z+.gradient_match.relevant"
    assert glance.cells["z+"]["in-region root exists"]["name"] == "region.z+.root_exists"
    assert glance.cells["z+"]["conservation (full backward)"]["name"] == "full_backward.z+.conserved"
    assert glance.cells["gamma1"]["in-region root exists"] is None
    assert format_rate(glance.cells["gamma1"]["gradient match"]).startswith("69.00 % [")


def test_a_users_subject_run_gets_only_its_own_sections_and_sentences():
    rows = [_row(RateKey("subject", "zero_output", subject="mynet", rule="z+"), 3, 50),
            _row(RateKey("subject", "gradient_match", subject="mynet", rule="z+", layer=1), 40, 50)]
    rows.append(_row(RateKey("subject", "conserved", subject="mynet", rule="z+"), 50, 50))
    summary = summarize(rows)
    assert [a.question for a in summary.answers] == ["Does z+ conserve relevance on subject "
                                                     "mynet (sum_i R_i within 1 % of f(x))?"]
    assert summary.glance is None
    assert [s.family for s in sections(rows)] == ["subject"]
    files = _render(rows)
    markdown = files["report.md"].decode()
    # the heading says what is there; "yours" only for subjects the run was handed (--dtd-subject)
    assert "## Subjects" in markdown and "## Your subjects" not in markdown
    assert "notebook" not in markdown.lower().split("## glossary")[0]
    yours = render_report(rows, [], {**CONFIG, "your_subjects": ["mynet"]})["report.md"].decode()
    assert "## Your subjects" in yours and "### Subject mynet (yours), rule z+" in yours
    assert not [name for name in files if name.endswith(".png")]  # nothing to compare across rules or layers
    conformance = [_row(RateKey("conformance", "equals_dtd", subject="mylrp"), 99, 100)]
    assert [a.question for a in summarize(conformance).answers] == ["Does implementation mylrp keep DTD's promises?"]


# --------------------------------------------------------------------------- sections and natural sort
def test_natural_key_reads_numbers_and_rule_parameters():
    labels = ["gamma10", "layer10", "gamma1", "layer2", "gamma0_25", "gamma0_1", "z+", "w2"]
    assert sorted(labels, key=natural_key) == ["gamma0_1", "gamma0_25", "gamma1", "gamma10", "layer2", "layer10", "w2",
                                               "z+"]


def test_sections_follow_the_families_and_sort_naturally():
    rows = _run_rows() + [_row("demo.rate", 1, 2)]
    found = sections(list(reversed(rows)))
    assert [s.family for s in found] == ["notebook", "generated", "region", "full_backward", "agreement", None]
    assert found[-1].title == OTHER and [r["name"] for r in found[-1].rows] == ["demo.rate"]
    generated = found[1]
    assert [title for title, _ in generated.parts] == ["rule gamma0_1", "rule gamma1", "rule gamma10", "rule z+"]
    z_plus = dict(generated.parts)["rule z+"]
    assert [r["name"] for r in z_plus] == ["z+.zero_output.relevant", "z+.gradient_match.relevant",
                                           "z+.layer0.gradient_match",
                                           "z+.layer2.gradient_match", "z+.layer10.gradient_match"]


def test_rows_recorded_by_name_are_placed_like_keyed_rows():
    keyed = _row(RateKey("generated", "gradient_match", rule="z+", layer=3), 5, 10)
    plain = _row(RateKey("generated", "gradient_match", rule="z+", layer=3), 5, 10, keyed=False)
    assert plain["key"] is None and keyed["key"] is not None
    assert row_key(plain) == row_key(keyed) == RateKey("generated", "gradient_match", rule="z+", layer=3)
    assert row_key({"name": "not.a.rate", "key": None}) is None


# --------------------------------------------------------------------------- by design
@pytest.mark.parametrize("key, fixed", [
    (RateKey("notebook", "gradient_match", layer=SEED_TOP_LAYER, unit="points"), True),
    (RateKey("notebook", "gradient_match", layer=SEED_TOP_LAYER, finder="region_roots"), True),
    (RateKey("notebook", "gradient_match", layer=SEED_TOP_LAYER - 1, unit="points"), False),
    # trivial roots of the other output match
    (RateKey("notebook", "gradient_match", layer=SEED_TOP_LAYER, unit="roots"), False),
    (RateKey("notebook", "gradient_match", layer=0, finder="sampled_roots", subset="midpoint"), True),
    (RateKey("region", "gradient_match", rule="z+", subset="midpoint"), True),
    (RateKey("region", "gradient_match", rule="z+", subset="at_root"), False),
    (RateKey("agreement", "agree_where_conditioned", subject="zennit", rule="x"), True),
    (RateKey("agreement", "points", subject="zennit", rule="x"), False),
    (RateKey("generated", "gradient_match", rule="z+", layer=SEED_TOP_LAYER), False),  # mixed depths: never fixed
])
def test_by_design_is_decided_from_the_key(key, fixed):
    reason = by_design(key)
    assert (reason is not None) == fixed
    if fixed:
        assert ("0 %" in reason) or ("100 %" in reason)


def test_by_design_rows_are_kept_apart_from_findings():
    rows = _run_rows()
    measured, fixed = split_by_design(rows)
    assert {r["name"] for r, _ in fixed} == {"notebook.layer3.gradient_match.points",
                                             "agreement.zennit.z+.agree_where_conditioned"}
    files = _render(rows)
    markdown = files["report.md"].decode()
    findings, apart = markdown.split("## Rates fixed by design")
    for r, _ in fixed:
        assert f"`{r['name']}`" not in findings.split("## Figures")[-1]
        assert f"`{r['name']}`" in apart
    page = files["report.html"].decode()
    measured_table, fixed_table = page.split('id="by-design-rates"')
    for r, _ in fixed:
        assert r["name"] not in measured_table.split('id="rates"')[1] and r["name"] in fixed_table


# --------------------------------------------------------------------------- figures
def test_derived_figures_come_from_the_rows():
    plots = figures.derived_plots(_run_rows())
    by_file = {p["file"]: p for p in plots}
    comparison = by_file[figures.RULES_FIGURE]
    assert comparison["groups"] == ["gamma0_1", "gamma1", "gamma10", "z+"]
    assert comparison["series"]["gradient match"][3] == "z+.gradient_match.relevant"
    layers = by_file[figures.LAYERS_FIGURE]
    assert layers["columns"] == [0, 2, 10] and layers["rows"] == comparison["groups"]
    assert layers["cells"][0] == ["gamma0_1.layer0.gradient_match", "gamma0_1.layer2.gradient_match",
                                  "gamma0_1.layer10.gradient_match"]


def test_pngs_are_byte_identical_across_renders():
    rows = _run_rows()
    plots = [{"file": "h.png", "kind": "histogram", "title": "values", "series": {"a": [0.0, 0.1, 0.1, 5.0]},
              "xlabel": "value of a"},
             {"file": "b.png", "kind": "bars", "title": "bars",
              "rows": ["z+.layer0.gradient_match", "z+.layer2.gradient_match"], "labels": ["0", "2"]}]
    first, second = _render(rows, plots), _render(rows, plots)
    pngs = sorted(name for name in first if name.endswith(".png"))
    assert pngs == ["b.png", "h.png", figures.LAYERS_FIGURE, figures.RULES_FIGURE]
    for name in first:
        assert first[name] == second[name], name
    assert all(first[name][:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    assert b"tEXtSoftware" not in first["h.png"]


def test_a_chart_whose_rates_are_all_zero_becomes_a_sentence():
    rows = [_row(RateKey("notebook", "zero_output", neuron=j), 0, 1000) for j in range(3)]
    plot = {"file": "zero.png", "kind": "bars", "title": "zero output per neuron", "rows": [r["name"] for r in rows],
            "labels": ["n0", "n1", "n2"], "caption": "Share of roots."}
    files = _render(rows, [plot])
    assert "zero.png" not in files
    import json

    entry = json.loads(files["report.json"])["plots"][0]
    assert entry["file"] is None and entry["text"].startswith("No chart: all 3 rates (n0 to n2) are 0 %")
    assert entry["text"] in files["report.md"].decode()
    rows[1] = _row(RateKey("notebook", "zero_output", neuron=1), 1, 1000)
    assert "zero.png" in _render(rows, [plot])


def test_every_caption_states_the_confidence_level():
    plots = figures.derived_plots(_run_rows()) + [{"file": "h.png", "kind": "histogram", "title": "t", "series": {}}]
    for plot in plots:
        assert "99 %" in figures.caption(plot, CONFIDENCE)


# --------------------------------------------------------------------------- report.md and report.html
def test_markdown_answers_first_glossary_linked_and_examples_shown():
    rows = _run_rows()
    rows[1] = {**rows[1], "example": "net = ReLUNetwork.from_sequential(...)\nx = tensor([[0.0, 1.0]])"}
    markdown = _render(rows)["report.md"].decode()
    order = [markdown.index(h) for h in ("## Answers", "## Rules at a glance", "## Figures",
                                         "## The seed notebook's experiment",
                                         "## Rates fixed by design", "## The run", "## Glossary")]
    assert order == sorted(order)
    for anchor in ("f_k", "region", "relevant", "design-effect", "interval"):
        assert f"](#{anchor})" in markdown.split("## Answers")[0] and f'<a id="{anchor}"></a>' in markdown
    assert "x = tensor([[0.0, 1.0]])" in markdown
    assert "hypothesis_max_examples" not in markdown and "roots evaluated (z+, generated networks) | 1234" in markdown
    assert "| description |" in markdown and "| counts |" not in markdown


class _Resources(HTMLParser):
    """Every tag and its attributes."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_lists_every_rate():
    rows = _run_rows()
    rows[0] = {**rows[0], "status": "regression", "example": "<b>not markup</b>"}
    files = _render(rows)
    page = files["report.html"].decode()
    parser = _Resources()
    parser.feed(page)
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("link", "iframe", "object", "embed")]
    assert not [a for t, a in tags if t == "script" and "src" in a]
    for tag, attrs in tags:
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), (tag, attrs["src"][:40])
        if "href" in attrs:
            assert attrs["href"].startswith("#"), (tag, attrs["href"])
    assert not re.search(r"https?://|url\(|@import", page)
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == len([n for n in files if n.endswith(".png")])
    cells = page.split('id="rates"')[1]
    measured, _ = split_by_design(rows)
    for r in rows:
        assert f"<code>{r['name']}</code>" in page
    for r in measured:
        assert f"<code>{r['name']}</code>" in cells
    assert re.search(
        r'<tr class="regression" data-status="regression" data-section="notebook" id="rate-notebook--zero_output">'
        r"<td>notebook</td><td><code>notebook\.zero_output</code>",
        page,
    )
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page


def test_table_legend_names_every_column_and_the_level():
    legend = table_legend(CONFIDENCE)
    assert "\n" not in legend and "99 %" in legend
    for column in ("rate", "interval", "trials", "baseline", "status", "regression", "new"):
        assert column in legend


# --------------------------------------------------------------------------- the page in a real browser
#: Debian's ``chromium`` package; where it is not installed (CI decides whether to) the render is skipped
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium) to render report.html")
def test_report_html_renders_offline_in_headless_chromium(tmp_path):
    rows = _run_rows()
    for name, data in _render(rows).items():
        (tmp_path / name).write_bytes(data)
    page = (tmp_path / "report.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True, timeout=120, check=True).stdout
    measured, _ = split_by_design(rows)
    # the inline script ran: the filter counted every measured rate
    assert f"{len(measured)} of {len(measured)} rates shown" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,2000", page], capture_output=True, timeout=120,
                   check=True)
    image = shot.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 20_000  # a blank page compresses to a few kB


def test_rows_fixed_by_design_are_listed_in_reading_order():
    K = RateKey
    rows = [_row(K("region", "gradient_match", rule="z+", subset="midpoint"), 5, 5),
            _row(K("notebook", "gradient_match", layer=SEED_TOP_LAYER, finder="walk_roots"), 0, 5),
            _row(K("notebook", "gradient_match", layer=0, finder="walk_roots", subset="midpoint"), 5, 5),
            _row(K("region", "gradient_match", rule="gamma10", subset="midpoint"), 5, 5),
            _row(K("region", "gradient_match", rule="gamma1", subset="midpoint"), 5, 5)]
    _, fixed = split_by_design(rows)
    assert [r["name"] for r, _ in fixed] == ["notebook.layer0.walk_roots.gradient_match.midpoint",
                                             "notebook.layer3.walk_roots.gradient_match",
                                             "region.gamma1.gradient_match.midpoint",
                                             "region.gamma10.gradient_match.midpoint",
                                             "region.z+.gradient_match.midpoint"]


def test_an_implementations_answer_shows_every_property_including_each_population():
    K = RateKey
    rows = [
        _row(K("conformance", "finite", subject="lib"), 50, 50),
        _row(K("conformance", "equals_dtd", subject="lib", subset="bias_negative"), 50, 50),
        _row(K("conformance", "equals_dtd", subject="lib", subset="bias_positive"), 10, 50),
    ]
    answer = next(a for a in summarize(rows, CONFIDENCE).answers if "implementation lib" in a.question)
    # one rate per sentence: the weakest property, its word from its own interval (never a range over properties)
    weakest = rows[2]
    assert answer.names == ["conformance.lib.equals_dtd.bias_positive"] and answer.verdict == ("No, 1 of 3 "
                                                                                               "properties break")
    assert answer.detail == ("the weakest, equals_dtd (bias positive), holds "
                             f"{scale_word(weakest).lower()}: {format_rate(weakest)} of 50 trials")
    matrix = implementation_matrix(rows)
    assert matrix.implementations == ["lib"] and matrix.columns == [
        ("equals_dtd", "bias_negative"),
        ("equals_dtd", "bias_positive"),
        ("finite", None),
    ]
    other = rows + [_row(K("conformance", "positivity", subject="other"), 5, 5)]
    matrix = implementation_matrix(other)
    assert matrix.cells["other"][("finite", None)] is None  # n/a: not measured for that implementation
    assert (
        matrix.cells["lib"][("positivity", None)] is None and matrix.cells["other"][("positivity", None)]["rate"] == 1.0
    )
    files = render_report(other, [], CONFIG)
    markdown, page = files["report.md"].decode(), files["report.html"].decode()
    assert "## Implementations x properties" in markdown
    assert "| lib | 100.00 %<br>[" in markdown and "| **20.00 %<br>[" in markdown and "n/a" in markdown
    table = page.split('id="implementations"')[1].split("</table>")[0]
    assert table.count('class="cell break"') == 1 and table.count('class="na"') == 4 and "background:rgb(" in table
    assert 'title="conformance.lib.equals_dtd.bias_positive: 20.00 % [' in table


def test_every_navigation_link_has_its_target():
    """A user's subject-only run has no rules-at-a-glance table nor fixed-by-design rows: no link may point at them."""
    rows = [_row(RateKey("subject", "zero_output", subject="mine", rule="z+", layer=0), 3, 50)]
    files = render_report(rows, [], {"confidence": CONFIDENCE})
    for name in ("report.md", "report.html"):
        text = files[name].decode()
        targets = set(re.findall(r'id="([^"]+)"', text)) | {
            m.lower().replace(" ", "-") for m in re.findall(r"^#+ (.+)$", text, re.M)
        }
        links = set(re.findall(r'href="#([^"]+)"', text)) | set(re.findall(r"\]\(#([^)]+)\)", text))
        assert links and links <= targets, f"{name}: dead links {sorted(links - targets)}"


# ------------------------------------------------------------------------- the words, the verdict, the changes, causes
def _share(successes, trials):
    return _row("demo.rate", successes, trials)


@pytest.mark.parametrize("successes, trials, word", [
    (0, 10, "Never"), (10, 10, "Always"), (1, 10000, "Almost never"), (1000, 10000, "Rarely"),
    (5000, 10000, "Sometimes"), (8500, 10000, "Often"), (9990, 10000, "Almost always"),
    (2, 10, "Almost never to sometimes"), (5, 20, "Rarely to sometimes"), (72, 100, "Sometimes to often"),
])
def test_the_word_is_decided_from_the_interval(successes, trials, word):
    r = _share(successes, trials)
    assert scale_word(r) == word, (r["ci_low"], r["ci_high"])


def test_the_glossary_states_the_scale_and_the_answers_link_it():
    files = _render(_run_rows())
    for name in ("report.md", "report.html"):
        text = files[name].decode()
        for word, rule in SCALE_TEXT:
            assert f"{word}: {rule}" in text or escape(f"{word}: {rule}") in text
        assert "#scale" in text


def test_every_answer_is_one_sentence_with_one_rate():
    rows = _run_rows(17) + [_row(RateKey("region", "root_exists", rule="w2"), 10, 100)]
    for answer in summarize(rows).answers:
        assert len(answer.names) == 1 and answer.detail.count(" % [") == 1, answer  # one rate and its interval
        word = scale_word({r["name"]: r for r in rows}[answer.names[0]])
        assert answer.verdict == word or word.lower() in answer.detail
    labels = [a.label for a in summarize(rows).answers if "inside the input's linear region" in a.question]
    assert labels == ["w2", "z+"]


def test_the_verdict_comes_first_and_links_the_offending_rows():
    baseline = {"rate": 0.9, "ci_low": 0.89, "ci_high": 0.91}
    rows = _run_rows() + [_row(RateKey("region", "root_exists", rule="w2"), 10, 100, baseline=baseline)]
    files = _render(rows)
    markdown, page = files["report.md"].decode(), files["report.html"].decode()
    anchor = row_anchor("region.w2.root_exists")
    first = markdown.split("\n\n")[1]
    assert first.startswith("**Gate: FAILED — 1 regression") and f"(#{anchor})" in first
    assert f'<a id="{anchor}"></a>`region.w2.root_exists`' in markdown
    top = page.split('<p class="guide">')[0]
    assert 'class="verdict-line fail"' in top and f'href="#{anchor}"' in top and f'id="{anchor}"' in page
    ok = _render(_run_rows())["report.md"].decode().split("\n\n")[1]
    assert ok.startswith(f"**Gate: ok — {len(_run_rows())} rates: 0 consistent "
                         f"with the baseline; {len(_run_rows())} new")


def test_a_row_below_a_floor_fails_the_verdict_and_says_which_floor_everywhere():
    from properties.measure import gates
    from properties.report import verdict_lines

    key = RateKey("conformance", "finite", subject="mylib", subset="cnn_bias_negative")
    failing = _row(key, 97, 100)
    reasons = gates.failed_floors(failing, key, [gates.parse_floor("conformance.mylib.*>=0.99")])
    assert len(reasons) == 2  # the must-hold property and the user's floor
    failing.update(status=gates.BELOW_FLOOR, floor=reasons)
    rows = _run_rows() + [failing]
    files = _render(rows)
    markdown, page = files["report.md"].decode(), files["report.html"].decode()
    first = markdown.split("\n\n")[1]
    assert (
        first.startswith("**Gate: FAILED — 1 below a required floor") and f"(#{row_anchor(failing['name'])})" in first
    )
    assert "**below_floor**" in markdown and "below the floor --require 'conformance.mylib.*&gt;=0.99'" not in markdown
    assert "below the floor --require 'conformance.mylib.*>=0.99'" in markdown
    assert '<tr class="below_floor" data-status="below_floor"' in page
    assert escape("below the floor --require 'conformance.mylib.*>=0.99'") in page
    lines = verdict_lines(rows)
    assert lines[0].startswith("Gate: FAILED — 1 below a required floor")
    assert any(line.strip().startswith(f"{failing['name']}: 97.00 % [") and "finite must hold in every trial" in line
               for line in lines)
    assert "below_floor" in table_legend(CONFIDENCE)


def test_changes_since_the_baseline_put_failures_first_then_the_largest_moves():
    def moved(name, successes, base_rate):
        return _row(name, successes, 1000, baseline={"rate": base_rate, "ci_low": base_rate - 0.01,
                                                     "ci_high": base_rate + 0.01})

    rows = [moved("a.small", 505, 0.5), moved("b.large", 800, 0.5), moved("c.failing", 300, 0.5),
            moved("d.same", 500, 0.5), _row("e.new", 1, 2)]
    assert rows[2]["status"] == "regression" and rows[1]["status"] == "regression"
    assert [r["name"] for r in changes(rows)] == ["b.large", "c.failing", "a.small"]
    assert [r["name"] for r in changes(rows, 1)] == ["b.large"]
    markdown = _render(rows)["report.md"].decode()
    section = markdown.split("## Changes since the baseline")[1].split("## Answers")[0]
    assert "| +30.00 points | **regression** |" in section and "| -20.00 points | **regression** |" in section
    assert section.index("b.large") < section.index("c.failing") < section.index("a.small") and "d.same" not in section


def test_a_low_conservation_names_the_layer_whose_roots_are_missing():
    K = RateKey
    rows = [_row(K("subject", "conserved", subject="cnn", rule="z+"), 9, 200),
            _row(K("subject", "root_exists", subject="cnn", rule="z+", layer=0), 790, 1000),
            _row(K("subject", "root_exists", subject="cnn", rule="z+", layer=1), 1000, 1000),
            _row(K("subject", "zero_output", subject="cnn", rule="z+", layer=1), 52, 100)]
    config = {**CONFIG, "subject cnn, z+, layer 0: mean upper relevance (dtd.accounting)": 10.0,
              "subject cnn, z+, layer 0: mean lost relevance (dtd.accounting)": 0.37,
              "subject cnn, z+, layer 0: mean conserved relevance (dtd.accounting)": 9.63,
              "subject cnn: layers (model modules)": "0: 0 Conv2d | 1: 3 Linear"}
    summary = summarize(rows, CONFIDENCE, config)
    conserved = next(a for a in summary.answers if "conserve" in a.question)
    assert conserved.causes == [f"← root_exists at layer 0 is {format_rate(rows[1])}: neurons without a root "
                                "lose their relevance; 3.7 % of the relevance reaching layer 0 is lost there"]
    assert "subject.cnn.z+.layer1.zero_output" not in summary.causes  # judged up to f(x)'s rounding already
    assert "subject.cnn.z+.layer1.root_exists" not in summary.causes
    grid, = subject_grids(rows, config)
    assert grid.layers == [0, 1] and grid.names == {0: "0 Conv2d", 1: "3 Linear"}
    assert (
        grid.shares(0) == pytest.approx({"passed on": 0.963, "lost (no root)": 0.037, "bias share": 0.0})
        and grid.shares(1) is None
    )
    files = render_report(rows, [], config)
    markdown, page = files["report.md"].decode(), files["report.html"].decode()
    assert "| 0 (0 Conv2d) |" in markdown and "passed on 96.3 %; lost (no root) 3.7 %" in markdown
    assert 'class="passed" style="width:96.3%"' in page and 'class="lost" style="width:3.7%"' in page
    assert "← root_exists at layer 0" in page.split('id="rates"')[1]
