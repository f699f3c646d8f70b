"""A user's subjects from pytest (--dtd-subject) and from the check command: same
rows, the user's baseline, clear errors."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from properties.cli.check import add_check_command, pytest_arguments
from properties.measure.keys import RateKey
from properties.plugin.subjects import USER_BASELINE, load_subjects

USER_MODULE = '''
import torch
from torch import nn
from properties import Subject


def _model():
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.6)
        model[-1].bias.add_(0.5)
    return model.eval(), torch.rand(25, 5, generator=generator)


def subjects():
    model, x = _model()
    return [Subject("tiny", model, x, neurons_per_point=4), Subject("tiny_w2", model, x, rules=("w2",), outputs=0)]


def one():
    model, x = _model()
    return Subject("one", model, x)


def quiet():
    model, x = _model()
    return [Subject("loud", model, x), Subject("quiet", model, x, findings=False)]


def number():
    return 3


def empty_list():
    return []


def empty_inputs():
    model, x = _model()
    return Subject("empty", model, x[:0])


def no_positive_output():
    model, x = _model()
    with torch.no_grad():
        model[-1].bias.fill_(-50.0)
    return Subject("negative", model, x)


def crashes():
    raise RuntimeError("the data file is missing")


not_callable = 3
'''


@pytest.fixture
def user_dir(pytester, monkeypatch):
    pytester.makepyfile(usermod=USER_MODULE)
    monkeypatch.chdir(pytester.path)
    monkeypatch.syspath_prepend(str(pytester.path))
    yield pytester
    sys.modules.pop("usermod", None)


def _rows(path):
    rows = json.loads(path.read_text())["properties"]
    return {
        r["name"]: {k: r[k] for k in ("successes", "trials", "rate", "ci_low", "ci_high", "status", "description")}
        for r in rows
    }


def _check(capsys, *args):
    """``dtd-properties check ARGS`` in this process: (exit code, stdout + stderr)."""
    from properties.cli import main

    try:
        code = main(["check", *args])
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_dtd_subject_and_check_command_write_the_same_rows(user_dir):
    pytester = user_dir
    # pytest in this process, the console in a process of its own (`python -m` works as a program): the same rows
    via_pytest = pytester.runpytest_inprocess("-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties",
                                              "--dtd-subject", "usermod:subjects", "--property-report", "from_pytest")
    via_pytest.assert_outcomes(passed=2)
    parser = argparse.ArgumentParser()
    args = add_check_command(parser.add_subparsers()).parse_args(["usermod:subjects", "--report", "from_check"])
    command = pytester.run(sys.executable, "-m", "properties.cli", "check", "usermod:subjects", "--report",
                           "from_check")
    assert command.ret == 0, command.stdout.str() + command.stderr.str()
    assert pytest_arguments(args, "EMPTY")[:1] == ["EMPTY"]
    rows = _rows(pytester.path / "from_pytest" / "report.json")
    assert rows == _rows(pytester.path / "from_check" / "report.json")
    assert {name.split(".")[1] for name in rows} == {"tiny", "tiny_w2"}
    assert "subject.tiny.z+.layer0.gradient_match" in rows and "subject.tiny_w2.w2.conserved" in rows
    # no baseline of the user's: every rate is new, nothing about the project's baseline is said
    assert {r["status"] for r in rows.values()} == {"new"}
    assert "baseline rate(s) were not measured" not in via_pytest.stdout.str() + command.stdout.str()
    # the subjects came from --dtd-subject: the report calls them the user's, and says which seed drew the neurons
    report = json.loads((pytester.path / "from_check" / "report.json").read_text())
    assert report["config"]["your_subjects"] == ["tiny", "tiny_w2"] and report["config"]["neuron_draw_seed"] == 0
    markdown = (pytester.path / "from_check" / "report.md").read_text()
    assert "## Your subjects" in markdown and "### Subject tiny (yours), rule z+" in markdown
    assert "neuron-draw seed (subjects' sampled neurons) 0" in markdown


def test_a_users_run_gates_on_the_users_baseline(user_dir, capsys, monkeypatch):
    pytester = user_dir
    monkeypatch.setattr(sys, "path", list(sys.path))  # the console puts the current directory first
    run = lambda *extra: _check(capsys, "usermod:one", "--no-findings", *extra)  # noqa: E731  (the subject's rows gate alike)
    assert run("--update-baseline")[0] == 0
    baseline = json.loads((pytester.path / USER_BASELINE).read_text())["properties"]
    assert set(baseline) and all(RateKey.parse(name).subject == "one" for name in baseline)
    assert run()[0] == 0
    assert {r["status"] for r in _rows(pytester.path / "property-report" / "report.json").values()} == {"ok"}
    # a baseline that disagrees fails the run
    name = "subject.one.z+.conserved"
    baseline[name].update(rate=0.0, ci_low=0.0, ci_high=0.0, successes=0)
    (pytester.path / USER_BASELINE).write_text(json.dumps({"properties": baseline}))
    code, out = run()
    assert code == 1 and name in out


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("usermod", ValueError, "expected MODULE:FACTORY"),
        ("no_such_module:subjects", ValueError, "cannot import module 'no_such_module'"),
        ("usermod:missing", ValueError, "has no attribute 'missing'; expected a function"),
        ("usermod:not_callable", TypeError, "not a function"),
        ("usermod:number", TypeError, "returned int; expected a properties.Subject"),
        ("usermod:empty_list", ValueError, "empty list"),
        ("usermod:empty_inputs", ValueError,
         r"usermod:empty_inputs ran \(its training, if any, is done\) and "
         r"then failed: inputs hold no point.*check_model"),
        ("usermod:no_positive_output", ValueError, "no point has a positive explained output"),
        ("usermod:crashes", ValueError,
         "factory usermod:crashes ran and raised RuntimeError: the data file is missing"),
    ],
)
def test_bad_factories_name_what_was_given_and_expected(user_dir, spec, error, match):
    with pytest.raises(error, match=match):
        load_subjects(spec, directory=user_dir.path)


@pytest.mark.parametrize("factory, message", [("usermod:missing", "has no attribute 'missing'"),
                                              ("usermod:crashes",
                                               "ran and raised RuntimeError: the data file is missing")])
def test_a_bad_factory_is_a_usage_error_of_the_command(user_dir, capsys, monkeypatch, factory, message):
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, output = _check(capsys, factory)
    assert code == 4
    assert message in output and "INTERNALERROR" not in output
    # the user typed no pytest option
    assert "ERROR: --dtd-subject" not in output and f"subject factory {factory}:" in output


def test_findings_rows_come_with_a_subject_unless_switched_off(user_dir, capsys, monkeypatch):
    pytester = user_dir
    monkeypatch.setattr(sys, "path", list(sys.path))
    run = lambda *extra: _check(capsys, "usermod:quiet", *extra)[0]  # noqa: E731
    assert run("--report", "with") == 0
    families = {}
    for name in _rows(pytester.path / "with" / "report.json"):
        key = RateKey.parse(name)
        families.setdefault(key.subject, set()).add(key.family)
    assert families["loud"] == {"subject", "insensitivity", "invariance", "randomisation"}
    assert families["quiet"] == {"subject"}  # Subject(..., findings=False)
    assert run("--report", "without", "--no-findings") == 0
    assert {RateKey.parse(name).family for name in _rows(pytester.path / "without" / "report.json")} == {"subject"}


SPLIT_MODULE = '''
import os
import torch
from torch import nn
from properties import Subject

CALLS = "factory_calls.txt"


def split():
    with open(CALLS, "a") as calls:  # one line per call of the factory (its "training"), with the process id
        calls.write(f"{os.getpid()}\\\\n")
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.6)
        model[-1].bias.add_(0.5)
    x = torch.rand(9, 1, 4, 4, generator=generator)
    return Subject("split", model.eval(), x, rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3,
                   points_per_item=2, findings=False)
'''


def _rates(path):
    rows = json.loads(path.read_text())["properties"]
    return {r["name"]: (r["successes"], r["trials"], r["ci_low"], r["ci_high"], r["status"]) for r in rows}


def test_a_split_subject_under_xdist_reports_what_a_serial_run_does(pytester, monkeypatch):
    """Five parts spread over two xdist workers: the merged rows equal the serial run's and evaluate()'s, every
    interval included; the factory ran once per process (once serially, once per worker, never in the controller)."""
    from properties.subjects.subject import evaluate

    pytester.makepyfile(splitmod=SPLIT_MODULE.replace("\\\\n", "\\n"))
    monkeypatch.chdir(pytester.path)
    monkeypatch.syspath_prepend(str(pytester.path))
    common = ("-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties", "--dtd-subject",
              "splitmod:split")
    serial = pytester.runpytest(*common, "-p", "no:xdist", "--property-report", "serial")  # in this process
    serial.assert_outcomes(passed=5)
    calls = pytester.path / "factory_calls.txt"
    assert len(calls.read_text().split()) == 1
    calls.unlink()
    parallel = pytester.runpytest_subprocess(*common, "-n", "2", "--property-report", "parallel")
    parallel.assert_outcomes(passed=5)
    pids = calls.read_text().split()
    assert len(pids) == len(set(pids)) == 2, pids  # one call in each worker
    rows = _rates(pytester.path / "serial" / "report.json")
    assert rows == _rates(pytester.path / "parallel" / "report.json")
    import splitmod

    subject = splitmod.split()
    assert subject.n_parts == 5
    expected = evaluate(subject)
    assert {str(key) for key in expected.rates} == set(rows)
    for key, (rate, _) in expected.rates.items():
        low, high = rate.interval
        assert rows[str(key)][:4] == (rate.successes, rate.trials, low, high), key
    report = json.loads((pytester.path / "parallel" / "report.json").read_text())
    assert report["config"]["your_subjects"] == ["split"]
    # a part deselected: the subject reports no rates and the summary says why
    partial = pytester.runpytest(*common, "-p", "no:xdist", "--property-report", "partial", "-k", "not part3")
    partial.assert_outcomes(passed=4, deselected=1)
    assert "subject split: 4 of its 5 parts ran" in partial.stdout.str()


def test_check_require_gates_a_first_run_on_absolute_floors(user_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the console puts the current directory first
    # no baseline of the user's (a first run: every rate new), yet a floor fails the run where a rate is below it
    code, out = _check(capsys, "usermod:one", "--no-findings", "--report", "floors", "--require", "subject.one.*>=1")
    assert code == 1, out
    rows = _rows(user_dir.path / "floors" / "report.json")
    below = sorted(name for name, r in rows.items() if r["rate"] is None or r["rate"] < 1)
    assert below, "the tiny subject has a rate below 100 % to gate on"
    assert sorted(name for name, r in rows.items() if r["status"] == "below_floor") == below
    assert {r["status"] for name, r in rows.items() if name not in below} == {"new"}
    assert f"{below[0]}: " in out and "below the floor --require 'subject.one.*>=1'" in out
    # a pattern that matches nothing (a typo in the subject's name) is a usage error naming it and some rates
    code, out = _check(capsys, "usermod:one", "--no-findings", "--report", "typo", "--require", "subject.onee.*>=0.5")
    assert code == 4 and "'subject.onee.*>=0.5'" in out and "matches no rate" in out and "subject.one." in out
    # bad syntax: argparse's usage error, before anything runs
    code, out = _check(capsys, "usermod:one", "--require", "subject.one.*>0.5")
    assert code == 2 and "argument --require" in out and "PATTERN>=VALUE" in out
