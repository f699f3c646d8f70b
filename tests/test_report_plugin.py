"""The report from a real (throw-away) pytest run: terminal legend, report.html path, the same layout for any family."""

from __future__ import annotations

import json

INNER = '''
import pytest
from properties.keys import RateKey
from properties.stats import Rate

pytestmark = pytest.mark.properties

def test_subject(property_report):
    key = RateKey("subject", "zero_output", subject="mynet", rule="z+")
    property_report.rate(key, Rate(3, 50, property_report.confidence), summary=True)
'''


def test_terminal_legend_and_html_path_and_a_subject_only_report(pytester):
    pytester.makepyfile(test_inner=INNER)
    (pytester.path / "baseline.json").write_text('{"properties": {}}\n')  # a user's empty baseline: every rate new
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider", "--property-baseline",
                                          "baseline.json", "--property-report", "out")
    result.assert_outcomes(passed=1)
    # the verdict is the section's first line
    result.stdout.fnmatch_lines(["*DTD property rates*",
                                 "Gate: ok — 1 rate: 0 consistent with the baseline; 1 new*(see out/report.md)",
                                 "name *rate*", "subject.mynet.z+.zero_output*6.00%*new",
                                 "rate: share of trials*99 % confidence interval*status: ok | regression*",
                                 "*1 rates (0 ok, 0 regression, 1 new)*", "report: out/report.html*"])
    out = pytester.path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [r["key"]["subject"] for r in report["properties"]] == ["mynet"]
    markdown = (out / "report.md").read_text()
    # a test's subject rows are not "yours": only --dtd-subject's are
    assert (
        "## Subjects" in markdown
        and "## Your subjects" not in markdown
        and "### Subject mynet, rule z+" not in markdown
    )
    assert "## The seed notebook" not in markdown and "## Rules at a glance" not in markdown
    assert "subject.mynet.z+.zero_output" in (out / "report.html").read_text()
