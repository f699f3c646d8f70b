"""The absolute gates (properties.measure.gates): must-hold properties and --require floors, from the first run on.

The plugin paths run in-process (pytester); the consoles' ``--require`` in
tests/test_conformance_cli.py and tests/test_subject_plugin.py.
"""

from __future__ import annotations

import json

import pytest

from properties.measure import gates
from properties.measure.keys import RateKey


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, pattern, minimum", [
    ("conformance.mylib_*.equals_dtd.*>=0.99", "conformance.mylib_*.equals_dtd.*", 0.99),
    ("subject.mine.*.conserved >= 1", "subject.mine.*.conserved", 1.0),
    ("*>=0", "*", 0.0),
])
def test_a_floor_is_a_glob_and_a_share(text, pattern, minimum):
    floor = gates.parse_floor(text)
    assert (floor.pattern, floor.minimum, floor.text) == (pattern, minimum, text)


@pytest.mark.parametrize("text, message", [
    ("conformance.*.finite", "has no '>='"),
    (">=0.9", "has no pattern"),
    ("conformance.*<=0.9", "has no '>='"),
    ("conformance.*=>0.9", "has no '>='"),
    ("conformance.*>=>=0.9", "holds '<', '>', '='"),
    ("conformance.*>=high", "'high' is not a number"),
    ("conformance.*>=99", "a share, not a percentage: 0.99 for 99 %"),
    ("conformance.*>=-0.1", "must lie in [0, 1]"),
    ("conformance.*>=nan", "must lie in [0, 1]"),
])
def test_bad_floors_name_the_problem_and_the_accepted_form(text, message):
    with pytest.raises(ValueError) as error:
        gates.parse_floor(text)
    assert message in str(error.value) and "PATTERN>=VALUE" in str(error.value)


def test_a_floor_judges_the_point_estimate_and_no_data_fails():
    floor = gates.parse_floor("a.*>=0.9")
    assert floor.matches("a.b.c") and not floor.matches("b.a")
    assert floor.holds({"rate": 0.9}) and not floor.holds({"rate": 0.8999}) and not floor.holds({"rate": None})


def test_must_hold_reads_the_keys_outcome_whatever_follows_it():
    for outcome in gates.MUST_HOLD:
        assert gates.must_hold(RateKey("conformance", outcome, subject="mylib"))
        # the kit's per-architecture rows (a population after the property) are gated too
        assert gates.must_hold(RateKey("conformance", outcome, subject="mylib", subset="cnn_bias_negative"))
    assert not gates.must_hold(RateKey("conformance", "equals_dtd", subject="finite", subset="bias_free"))
    assert not gates.must_hold(None)
    row = {"name": "conformance.mylib.finite", "rate": 0.99, "successes": 99, "trials": 100}
    assert gates.failed_floors(row, RateKey("conformance", "finite", subject="mylib"), []) != []
    assert gates.failed_floors({**row, "rate": 1.0, "successes": 100},
                               RateKey("conformance", "finite", subject="mylib"), []) == []
    empty = {"name": "conformance.mylib.finite", "rate": None, "successes": 0, "trials": 0}
    assert gates.failed_floors(empty, RateKey("conformance", "finite", subject="mylib"), []) != []


# --------------------------------------------------------------------------- the pytest plugin, in-process
INNER = '''
import os
import pytest
from properties.keys import RateKey
from properties.stats import Rate

pytestmark = pytest.mark.properties

def test_kit(property_report):
    finite = int(os.environ.get("GATE_FINITE", "100"))
    property_report.rate("conformance.mylib.finite", Rate(finite, 100), "finite of 100")
    key = RateKey("conformance", "no_side_effects", subject="mylib", subset="cnn_bias_free")
    property_report.rate(key, Rate(10, 10))
    property_report.rate("conformance.mylib.equals_dtd.bias_free", Rate(95, 100), "equals of 100")

def test_other(property_report):
    property_report.rate("other.rate", Rate(1, 2), "other: not a conformance row")
'''


@pytest.fixture
def kit(pytester, monkeypatch):
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.delenv("GATE_FINITE", raising=False)

    def run(*args, finite=100, update=False):
        monkeypatch.setenv("GATE_FINITE", str(finite))
        # a user's first run: no baseline entries, every rate is new (or no baseline file yet, when updating)
        baseline = ["--property-baseline", "baseline.json", "--property-update-baseline"] if update else \
            ["--property-baseline", "empty.json"]
        return pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider", *baseline, *args)

    (pytester.path / "empty.json").write_text('{"properties": {}}\n')
    return run


def _rows(pytester):
    return {r["name"]: r
            for r in json.loads((pytester.path / "property-report" / "report.json").read_text())["properties"]}


def test_a_first_run_passes_when_the_must_hold_properties_hold(pytester, kit):
    kit().assert_outcomes(passed=2)
    assert {r["status"] for r in _rows(pytester).values()} == {"new"}


def test_a_must_hold_property_below_100_percent_fails_a_first_run(pytester, kit):
    result = kit(finite=99)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*1 rate(s) below a required floor*",
        "*conformance.mylib.finite: 99.00 % * of 100 trials -- finite must hold in every trial*",
        "*Gate: FAILED*1 below a required floor*",
        "*below_floor: conformance.mylib.finite*",
    ])
    rows = _rows(pytester)
    assert rows["conformance.mylib.finite"]["status"] == "below_floor"
    assert rows["conformance.mylib.finite"]["floor"] and "must hold" in rows["conformance.mylib.finite"]["floor"][0]
    assert rows["conformance.mylib.equals_dtd.bias_free"]["status"] == "new"  # not a must-hold property
    markdown = (pytester.path / "property-report" / "report.md").read_text()
    assert "**below_floor**" in markdown and "below a required floor" in markdown
    html = (pytester.path / "property-report" / "report.html").read_text()
    assert 'class="below_floor"' in html


def test_a_required_floor_gates_the_matching_rows_by_their_point_estimate(pytester, kit):
    below = kit("--property-require", "conformance.mylib.equals_dtd.*>=0.99")
    below.assert_outcomes(passed=1, failed=1)
    below.stdout.fnmatch_lines(["*conformance.mylib.equals_dtd.bias_free: 95.00 % * of 100 trials -- below the floor "
                                "--require 'conformance.mylib.equals_dtd.*>=0.99'*"])
    assert _rows(pytester)["conformance.mylib.equals_dtd.bias_free"]["status"] == "below_floor"
    # exactly at the floor passes (the point estimate is judged, not the interval's lower end)
    kit("--property-require", "conformance.mylib.equals_dtd.*>=0.95").assert_outcomes(passed=2)
    # several floors: each must hold
    several = kit("--property-require", "conformance.*>=0.9", "--property-require", "other.*>=0.6")
    several.assert_outcomes(passed=1, failed=1)
    assert _rows(pytester)["other.rate"]["status"] == "below_floor"


def test_a_floor_that_matches_no_rate_is_a_usage_error_naming_it_and_some_rates(pytester, kit):
    result = kit("--property-require", "conformance.mylib_*.equals_dtd.*>=0.99")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*usage error: the floor 'conformance.mylib_*.equals_dtd.*>=0.99'*matches "
                                 "no rate of this run (nearest rates: "
                                 "conformance.mylib.equals_dtd.bias_free, conformance.mylib.finite, *"])
    # nor is the baseline written when the floor was mistyped
    updated = kit("--property-require", "conformance.mylib_*.equals_dtd.*>=0.99", update=True)
    assert updated.ret == pytest.ExitCode.USAGE_ERROR and not (pytester.path / "baseline.json").exists()
    updated.stdout.fnmatch_lines(["*baseline NOT rewritten (a --require floor matches no rate)*"])


def test_the_nearest_rates_share_the_patterns_fixed_start():
    names = ["agreement.zennit.z+.points", "conformance.mylib.finite", "conformance.other.finite",
             "conformance.mylib.equals_dtd.bias_free"]
    floor = gates.parse_floor("conformance.mylib_*.equals_dtd.*>=0.99")
    assert gates.nearest(floor, names, 2) == ["conformance.mylib.equals_dtd.bias_free", "conformance.mylib.finite"]
    assert gates.nearest(gates.parse_floor("*>=0.5"), names, 1) == ["agreement.zennit.z+.points"]


def test_bad_floor_syntax_is_a_usage_error_at_start(pytester, kit):
    result = kit("--property-require", "conformance.*")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--property-require: floor 'conformance.*' has no '>='" in str(result.stderr) + str(result.stdout)
    assert not (pytester.path / "property-report").exists()


def test_an_update_below_a_floor_leaves_the_baseline_unwritten(pytester, kit):
    result = kit(finite=50, update=True)
    result.assert_outcomes(passed=1, failed=1)
    assert not (pytester.path / "baseline.json").exists()
    kit(update=True).assert_outcomes(passed=2)
    assert "conformance.mylib.finite" in json.loads((pytester.path / "baseline.json").read_text())["properties"]
