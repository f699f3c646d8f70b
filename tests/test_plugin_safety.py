"""What the property plugin leaves behind: the baseline, the report, start-up errors, file modes.

Runs of throw-away pytest sessions (pytester, in this process); the
interruption tests send SIGINT to a real subprocess pytest in the middle of a
test (the one thing here that needs a process of its own).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from properties import report
from properties.measure.stats import Rate

REPO = Path(__file__).resolve().parents[1]

INNER_TESTS = '''
import os
import pathlib
import time

import pytest
from properties.stats import Rate

pytestmark = pytest.mark.properties


def test_first(property_report):
    property_report.rate("first.rate", Rate(int(os.environ.get("FIRST", "50")), 100), "first: successes of 100")
    if os.environ.get("PLOT"):
        property_report.bars("first.png", "First", ["first.rate"], ["first"])


def test_second(property_report):
    property_report.rate("second.a", Rate(int(os.environ.get("SECOND_A", "30")), 100), "second: a")
    if os.environ.get("SECOND") == "raise":
        raise RuntimeError("crashed part-way")
    if os.environ.get("SECOND") == "crash":
        os._exit(3)  # the process dies: an xdist worker crash
    property_report.rate("second.b", Rate(60, 100), "second: b")
    if os.environ.get("SECOND") == "hang":
        pathlib.Path("ready").write_text("recorded")
        time.sleep(120)
'''

#: how long the interruption test waits for the inner run to reach its sleeping test
READY_TIMEOUT_S = 120


@pytest.fixture
def project(pytester, monkeypatch):
    """A project with two property tests; ``run(*args, **env)`` runs it in this
    process (xdist's workers are processes)."""
    for name in ("FIRST", "SECOND", "SECOND_A", "PLOT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_inner=INNER_TESTS)

    def run(*args, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            return pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider",
                                                 "--property-baseline", "baseline.json", *args)
        finally:
            for name in env:
                monkeypatch.delenv(name)

    return run


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _entries(path: Path) -> dict:
    return json.loads(path.read_text())["properties"]


def _interrupted_run(directory: Path, *options: str) -> tuple[int, str]:
    """Run the project in a subprocess pytest, send SIGINT while ``test_second`` sleeps; (exit code, output).

    ``test_first`` records a changed rate (90 %) and passes before the interruption.
    """
    env = {**os.environ, "FIRST": "90", "SECOND": "hang",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "properties.plugin", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--property-baseline", "baseline.json", *options],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a run started in the background (`cmd &`, nohup) inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: give the inner run the default disposition, as a terminal's Ctrl-C finds it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (directory / "ready").exists():
            assert inner.poll() is None, f"the inner run ended early:\n{inner.stdout.read()}"
            assert time.monotonic() < deadline, "the inner run did not reach its sleeping test"
            time.sleep(0.1)
        inner.send_signal(signal.SIGINT)
        output, _ = inner.communicate(timeout=READY_TIMEOUT_S)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.communicate()
    return inner.returncode, output


# --------------------------------------------------------------------------- item 1: the baseline
def test_failed_run_leaves_the_baseline_byte_identical_unless_partial_update_is_asked(pytester, project):
    project("--update-baseline").assert_outcomes(passed=2)  # creates the missing baseline
    before = (pytester.path / "baseline.json").read_bytes()
    assert set(json.loads(before)["properties"]) == {"first.rate", "second.a", "second.b"}

    failed = project("--update-baseline", FIRST="90", SECOND="raise", SECOND_A="10")
    failed.assert_outcomes(passed=1, failed=1)
    assert (pytester.path / "baseline.json").read_bytes() == before
    failed.stdout.fnmatch_lines(["*baseline NOT rewritten*baseline.json is unchanged*--update-baseline-partial*"])

    partial = project("--update-baseline-partial", FIRST="90", SECOND="raise", SECOND_A="10")
    partial.assert_outcomes(passed=1, failed=1)
    old, new = json.loads(before)["properties"], _entries(pytester.path / "baseline.json")
    assert new["first.rate"]["rate"] == 0.9  # the test that passed: merged
    assert new["second.a"] == old["second.a"] and new["second.b"] == old["second.b"]  # the failed one: as it was
    partial.stdout.fnmatch_lines(["*baseline partially updated*1 test(s) that passed*"])


def test_sigint_mid_run_leaves_baseline_and_report_as_they_were(pytester, project):
    project("--update-baseline", PLOT="1").assert_outcomes(passed=2)
    baseline = (pytester.path / "baseline.json").read_bytes()
    previous = _snapshot(pytester.path / "property-report")
    assert "report.json" in previous and "first.png" in previous

    returncode, output = _interrupted_run(pytester.path, "--update-baseline-partial")
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    # the rates of the test that completed are merged (partial update asked for); the rest stays
    old, new = json.loads(baseline)["properties"], _entries(pytester.path / "baseline.json")
    assert (
        new["first.rate"]["rate"] == 0.9 and new["second.a"] == old["second.a"] and new["second.b"] == old["second.b"]
    )
    # the report directory is exactly as it was; the partial report lies beside it, marked
    assert _snapshot(pytester.path / "property-report") == previous
    partial = json.loads((pytester.path / "property-report.partial.json").read_text())
    assert partial["partial"] is True and partial["reason"] == "interrupted"
    assert {r["name"] for r in partial["properties"]} == {"first.rate", "second.a", "second.b"}
    assert "partial report (interrupted)" in output


def test_sigint_with_full_update_leaves_the_baseline_byte_identical(pytester, project):
    project("--update-baseline").assert_outcomes(passed=2)
    baseline = (pytester.path / "baseline.json").read_bytes()
    returncode, output = _interrupted_run(pytester.path, "--update-baseline")
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert (pytester.path / "baseline.json").read_bytes() == baseline
    assert "baseline NOT rewritten (interrupted)" in output


def test_crashed_xdist_worker_leaves_baseline_and_report_as_they_were(pytester, project):
    project("--update-baseline").assert_outcomes(passed=2)
    baseline = (pytester.path / "baseline.json").read_bytes()
    previous = _snapshot(pytester.path / "property-report")
    crashed = project("--update-baseline", "-n", "2", FIRST="90", SECOND="crash")
    crashed.assert_outcomes(passed=1, failed=1)
    assert (pytester.path / "baseline.json").read_bytes() == baseline
    assert _snapshot(pytester.path / "property-report") == previous
    partial = json.loads((pytester.path / "property-report.partial.json").read_text())
    assert partial["partial"] is True and "xdist worker" in partial["reason"]


# --------------------------------------------------------------------------- item 3: the report
def test_new_report_leaves_no_stale_plot_and_keeps_the_users_files(pytester, project):
    project("--update-baseline", PLOT="1").assert_outcomes(passed=2)
    directory = pytester.path / "property-report"
    assert (directory / "first.png").exists()
    (directory / "notes.txt").write_text("mine")
    project().assert_outcomes(passed=2)  # no plot this time
    assert not (directory / "first.png").exists()
    assert (directory / "notes.txt").read_text() == "mine"
    assert "first.rate" in {r["name"] for r in json.loads((directory / "report.json").read_text())["properties"]}


def test_exitfirst_stop_writes_a_partial_report_beside_the_old_one(pytester, project):
    project("--update-baseline").assert_outcomes(passed=2)
    previous = _snapshot(pytester.path / "property-report")
    project("-x", SECOND="raise", FIRST="51").assert_outcomes(passed=1, failed=1)
    assert _snapshot(pytester.path / "property-report") == previous
    partial = json.loads((pytester.path / "property-report.partial.json").read_text())
    assert partial["partial"] is True and partial["reason"].startswith("stopped early")
    # the next complete run supersedes (and removes) the partial report
    project().assert_outcomes(passed=2)
    assert not (pytester.path / "property-report.partial.json").exists()


def _rows(*names):
    return [report.row(name, Rate(3, 10), f"{name}: demo", None) for name in names]


def _plot(file):
    return {"file": file, "kind": "bars", "title": file, "xlabel": "", "caption": "", "rows": ["a"], "labels": ["a"]}


def test_replace_report_swaps_the_directory_and_removes_only_its_own_stale_files(tmp_path):
    directory = tmp_path / "out"
    report.replace_report(directory, _rows("a"), [_plot("old.png")], {"confidence": 0.99})
    assert {p.name for p in directory.iterdir()} == {"report.json", "report.md", "report.html", "old.png",
                                                     report.MANIFEST}
    report.replace_report(directory, _rows("a"), [_plot("new.png")], {"confidence": 0.99})  # swap path
    assert {p.name for p in directory.iterdir()} == {"report.json", "report.md", "report.html", "new.png",
                                                     report.MANIFEST}
    (directory / "mine.txt").write_text("kept")
    report.replace_report(directory, _rows("a"), [], {"confidence": 0.99})  # one-by-one path (a foreign file)
    assert {p.name for p in directory.iterdir()} == {"report.json", "report.md", "report.html", "mine.txt",
                                                     report.MANIFEST}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".out.lock"]  # no staging directory left


def test_replace_report_failing_while_rendering_leaves_the_old_report(tmp_path):
    directory = tmp_path / "out"
    report.replace_report(directory, _rows("a"), [_plot("a.png")], {"confidence": 0.99})
    before = _snapshot(directory)
    with pytest.raises(ValueError, match="unknown plot kind"):
        report.replace_report(directory, _rows("a", "b"), [{**_plot("b.png"), "kind": "pie"}], {"confidence": 0.99})
    assert _snapshot(directory) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]  # the (empty) lock file stays


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unwritable_report_path_is_a_usage_error_at_start_up(pytester, where):
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    (pytester.path / "taken").write_text("a file")
    target = {"file": "taken", "under_file": "taken/sub"}[where]
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-report", target)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--property-report cannot be written: *taken*"])
    result.stdout.no_fnmatch_line("*passed*")  # before the run


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the file cases run everywhere")
def test_read_only_report_directory_is_a_usage_error_at_start_up(pytester):
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    locked = pytester.path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-report", "locked/report")
    finally:
        locked.chmod(0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--property-report cannot be written: *locked* is not writable*"])


def test_writable_problem_names_each_case(tmp_path):
    (tmp_path / "file").write_text("x")
    assert report.writable_problem(tmp_path / "new" / "dir", directory=True) is None
    assert "is not a directory" in report.writable_problem(tmp_path / "file", directory=True)
    assert "which is not a directory" in report.writable_problem(tmp_path / "file" / "sub", directory=True)
    assert "is a directory" in report.writable_problem(tmp_path, directory=False)


# --------------------------------------------------------------------------- item 2: the baseline file
GOOD_ENTRY = {"rate": 0.5, "ci_low": 0.4, "ci_high": 0.6, "successes": 50, "trials": 100, "confidence": 0.99,
              "interval": "wilson", "test": "t.py::test"}

BAD_ENTRIES = {
    "rate above 1": ({"rate": 1.5}, "field 'rate' must be a number in [0, 1]"),
    "rate NaN": ({"rate": math.nan}, "field 'rate' must be a number in [0, 1]"),
    "ci_low negative": ({"ci_low": -0.1}, "field 'ci_low' must be a number in [0, 1]"),
    "inverted bounds": ({"ci_low": 0.6, "ci_high": 0.4}, "'ci_low' (0.6) > 'ci_high' (0.4)"),
    "rate outside interval": ({"rate": 0.7}, "field 'rate' (0.7) lies outside"),
    "rate a string": ({"rate": "0.5"}, "field 'rate' must be a number"),
    "trials a float": ({"trials": 100.0}, "field 'trials' must be a non-negative integer"),
    "successes above trials": ({"successes": 101}, "field 'successes' (101) exceeds 'trials' (100)"),
    "confidence 1": ({"confidence": 1}, "field 'confidence' must be a number in (0, 1)"),
    "interval missing": ({"interval": None}, "field 'interval' must be a string"),
    "no data with trials": ({"rate": None, "ci_low": None, "ci_high": None}, "'trials' is not 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_read_baseline_rejects_a_bad_entry_naming_entry_and_field(tmp_path, case):
    change, message = BAD_ENTRIES[case]
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"properties": {"good": GOOD_ENTRY, "demo.bad": {**GOOD_ENTRY, **change}}}))
    with pytest.raises(ValueError, match="entry 'demo.bad'") as error:
        report.read_baseline(path)
    assert message in str(error.value)


def test_read_baseline_rejects_missing_fields_and_non_objects(tmp_path):
    path = tmp_path / "baseline.json"
    for entry, message in [({k: v for k, v in GOOD_ENTRY.items() if k != "ci_high"}, "field 'ci_high' is missing"),
                           ([0.5], "must be an object")]:
        path.write_text(json.dumps({"properties": {"demo.bad": entry}}))
        with pytest.raises(ValueError, match="entry 'demo.bad'") as error:
            report.read_baseline(path)
        assert message in str(error.value)


def test_read_baseline_accepts_the_committed_baseline_and_no_data_entries(tmp_path):
    assert len(report.read_baseline(REPO / "properties" / "baseline.json")) > 0
    path = tmp_path / "baseline.json"
    empty = {**GOOD_ENTRY, "rate": None, "ci_low": None, "ci_high": None, "successes": 0, "trials": 0}
    path.write_text(json.dumps({"properties": {"empty": empty, "good": GOOD_ENTRY}}))
    assert set(report.read_baseline(path)) == {"empty", "good"}
    with pytest.raises(ValueError, match="does not exist"):
        report.read_baseline(tmp_path / "absent.json")
    assert report.read_baseline(tmp_path / "absent.json", missing_ok=True) == {}


def test_baseline_path_errors_are_usage_errors_at_start_up(pytester):
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    (pytester.path / "a_directory").mkdir()
    (pytester.path / "bad.json").write_text(json.dumps({"properties": {"demo.bad": {**GOOD_ENTRY, "rate": 2}}}))
    for option, message in [("typo.json", "*baseline typo.json does not exist*"),
                            ("a_directory", "*baseline a_directory is a directory*"),
                            ("bad.json",
                             "*baseline bad.json: entry 'demo.bad': field 'rate' must be a number in [[]0, 1]*")]:
        result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-baseline", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, option
        result.stderr.fnmatch_lines([message])
        result.stderr.no_fnmatch_line("*INTERNALERROR*")
    # --update-baseline creates a missing baseline (nothing recorded here, so nothing is written)
    created = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-baseline", "typo.json",
                                           "--update-baseline")
    assert created.ret == pytest.ExitCode.OK


# --------------------------------------------------------------------------- item 8: seed and file modes
@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
def test_out_of_range_seed_is_a_usage_error_at_start_up(pytester, seed):
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "properties.plugin", "--property-seed", seed)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--property-seed must be *, got {seed}*"])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        report.write_baseline(tmp_path / "baseline.json", _rows("a"), {"a": "t.py::test"}, {})
        report.replace_report(tmp_path / "out", _rows("a"), [_plot("a.png")], {"confidence": 0.99})
        partial = report.write_partial_report(tmp_path / "out", _rows("a"), {"confidence": 0.99}, "interrupted")
    finally:
        os.umask(old)
    files = [tmp_path / "baseline.json", partial] + [p for p in (tmp_path / "out").iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct(0o777 & ~umask)
