"""Nothing leaks between implementations, nothing is lost on shared or full disks (issue 20, items 1-10).

One test (or a few) per item; each failed on the code before the change.
End-to-end runs are throw-away pytest sessions in this process (pytester's
in-process runs, the console's ``main``) where nothing global is at stake;
in subprocesses where it is: the file system's faults (slow renames, a full
disk, an immutable baseline) are injected by the inner project's conftest,
which wraps ``os.replace`` and ``os.rename`` for the whole process, and the
concurrent updates need two processes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dtd
from properties import Implementation, Subject, report
from properties import conformance as C
from properties.generate.strategies import Case
from properties.measure.keys import RateKey
from properties.measure.stats import Rate
from properties.usercode.factories import load_factory
from tests.test_conformance_kit import lrp_zplus
from tests.test_plugin_isolation import installed  # noqa: F401  (the fixture: the pytest11 entry point is installed)

REPO = Path(__file__).resolve().parents[1]
#: how long the inner runs of the concurrency test may take, each
INNER_TIMEOUT_S = 300
#: the simulated slow file system: seconds every rename takes (the probe's number)
SLOW_RENAME_S = 0.4


def _env(**extra: str) -> dict:
    """The environment of an inner run: this checkout first on the path, the fault injection's settings."""
    env = {key: value
           for key, value in os.environ.items() if key not in ("PYTEST_ADDOPTS", "SLOW_RENAME", "FAIL_RENAME")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**env, **extra}


def _pytest(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=INNER_TIMEOUT_S)


# --------------------------------------------------------------------------- item 1: a clean global state per call
def _case() -> Case:
    net = dtd.ReLUNetwork.random([3, 4, 2], seed=0, dtype=torch.float64)
    return Case(net, net.sample_inputs(5, seed=0), 0)


def _changing(change):
    def attribute(model, x, output):
        change()
        return lrp_zplus(model, x, output)
    return attribute


#: a global change an adapter may make -> how the counterexample names it
CHANGES = {
    "default dtype": (lambda: torch.set_default_dtype(torch.float64), "torch default dtype float32 \u2192 float64"),
    "grad mode": (lambda: torch.set_grad_enabled(False), "grad mode enabled \u2192 disabled"),
    "global RNG": (lambda: torch.rand(1), "torch global RNG advanced"),
    "anomaly mode": (lambda: torch.autograd.set_detect_anomaly(True), "anomaly detection off \u2192 on"),
    "deterministic": (lambda: torch.use_deterministic_algorithms(True), "deterministic algorithms off \u2192 on"),
    "threads": (lambda: torch.set_num_threads(torch.get_num_threads() + 1), "torch threads "),
}


def _global_state():
    return (torch.get_default_dtype(), torch.is_grad_enabled(), torch.random.get_rng_state(),
            torch.is_anomaly_enabled(), torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())


@pytest.mark.parametrize("what", sorted(CHANGES))
def test_a_global_change_fails_no_side_effects_names_it_and_is_undone(what):
    change, named = CHANGES[what]
    impl = Implementation(f"changes_{what.replace(' ', '_')}", _changing(change), "z+", stabilizer=0.0)
    before = _global_state()
    caller = C._Caller(impl)
    outcomes = C.evaluate_case(impl, _case(), "bias_negative", caller=caller)
    after = _global_state()
    assert before[:2] + before[3:] == after[:2] + after[3:] and torch.equal(before[2], after[2])  # undone
    assert outcomes["no_side_effects"][0].tolist() == [False]
    assert all(bool(holds.all()) for prop, (holds, _) in outcomes.items() if prop != "no_side_effects")  # nothing else
    assert caller.changes and all(named in change for change in caller.changes)
    assert named in C.describe_failure(impl, _case(), "no_side_effects")


def test_one_implementations_default_dtype_does_not_leak_into_the_next_ones_rows():
    """The probe: an adapter setting float64 as default, then one building its result with torch.zeros(x.shape)."""
    sweep = dict(seed=0, networks=2, points=4)
    leaky = C.run(Implementation("leaky", _changing(lambda: torch.set_default_dtype(torch.float64)), "z+",
                                 stabilizer=0.0),
                  **sweep)
    assert leaky.rates["conformance.leaky.no_side_effects"].successes == 0
    assert "torch default dtype float32 \u2192 float64" in leaky.examples["conformance.leaky.no_side_effects"]
    assert torch.get_default_dtype() == torch.float32

    def zeros_bug(model, x, output):
        out = torch.zeros(x.shape)  # the default dtype, not x's: float32 for float64 input
        out.copy_(lrp_zplus(model, x, output))
        return out

    after = C.run(Implementation("zeros_bug", zeros_bug, "z+", stabilizer=0.0), shrink_failures=False, **sweep)
    assert after.rates["conformance.zeros_bug.dtype_device"].successes == 0
    assert (
        after.rates["conformance.zeros_bug.no_side_effects"].successes
        == after.rates["conformance.zeros_bug.no_side_effects"].trials
    )


def test_grad_mode_switched_off_is_caught_on_every_network_and_the_next_implementation_runs():
    sweep = dict(seed=0, networks=2, points=4, shrink_failures=False)
    off = C.run(Implementation("nograd", _changing(lambda: torch.set_grad_enabled(False)), "z+", stabilizer=0.0),
                **sweep)
    rate = off.rates["conformance.nograd.no_side_effects"]
    assert rate.trials == 6 and rate.successes == 0  # every network, not 1 of 60
    assert torch.is_grad_enabled()

    def needs_grad(model, x, output):
        x = x.clone().requires_grad_(True)
        model(x)[:, output].sum().backward()
        return (x.grad * x).detach()

    lrp0 = C.run(Implementation("grad_x_input", needs_grad, "x", stabilizer=0.0), **sweep)  # no "does not require grad"
    assert lrp0.rates["conformance.grad_x_input.gradient_x_input"].successes > 0


# --------------------------------------------------------------------------- item 2: links are written through
def test_a_linked_baseline_and_a_dangling_report_link_are_written_through(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "b.json").write_text('{"properties": {}}\n')
    link = tmp_path / "conformance-baseline.json"
    link.symlink_to(Path("shared") / "b.json")
    report.update_baseline(link, _rows("a"), {"a": "t.py::test"})
    assert link.is_symlink() and os.readlink(link) == os.path.join("shared", "b.json")
    assert set(json.loads((shared / "b.json").read_text())["properties"]) == {"a"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]

    dangling = tmp_path / "dang"
    dangling.symlink_to(tmp_path / "elsewhere" / "rep")
    assert report.writable_problem(dangling, directory=True) is None
    report.replace_report(dangling, _rows("a"), [], {"confidence": 0.99})
    assert dangling.is_symlink() and (tmp_path / "elsewhere" / "rep" / "report.json").is_file()
    report.replace_report(dangling, _rows("a", "b"), [], {"confidence": 0.99})  # and again, over the old report
    assert dangling.is_symlink()
    assert {r["name"] for r in json.loads((dangling / "report.json").read_text())["properties"]} == {"a", "b"}


def test_update_baseline_through_a_link_end_to_end(pytester):
    tmp_path = pytester.path
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)  # no fault injection: this run may share the process
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "b.json").write_text('{"properties": {}}\n')
    (tmp_path / "link.json").symlink_to(Path("shared") / "b.json")
    (tmp_path / "dang").symlink_to("out/rep")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "properties.plugin",
                                          "--property-baseline", "link.json", "--update-baseline", "--property-report",
                                          "dang", "-k", "test_a")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert "baseline rewritten" in result.stdout.str()
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "dang").is_symlink()
    assert set(json.loads((tmp_path / "shared" / "b.json").read_text())["properties"]) == {"a.rate"}
    assert (tmp_path / "out" / "rep" / "report.json").is_file()


# --------------------------------------------------------------------------- item 3: the prefix, and the clash
def _inprocess(pytester, *args: str):
    """``pytest ARGS`` in pytester's directory, in this process: (exit code, stdout, stderr)."""
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist", *args)
    return int(result.ret), result.stdout.str(), result.stderr.str()


def test_a_projects_own_update_baseline_option_still_starts_beside_the_entry_point(pytester, installed):  # noqa: F811
    tmp_path = pytester.path
    (tmp_path / "conftest.py").write_text(
        'def pytest_addoption(parser):\n'
        '    parser.addoption("--update-baseline", action="store_true", default=False, help="this project\'s own")\n')
    (tmp_path / "test_mine.py").write_text(
        "from properties.stats import Rate\n\n\n"
        "def test_own_option_and_the_suite(request, property_report):\n"
        "    property_report.rate('mine.rate', Rate(1, 2), 'mine: demo')\n"
        "    assert request.config.getoption('--update-baseline') is True\n")
    (tmp_path / "b.json").write_text('{"properties": {}}\n')
    code, out, err = _inprocess(pytester, "--update-baseline", "--property-baseline", "b.json", "--property-report",
                                "rep")
    assert code == 0, out + err
    assert "already used" not in err and "already added" not in err
    assert [r["name"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["properties"]] == [
        "mine.rate"
    ]
    assert json.loads((tmp_path / "b.json").read_text()) == {"properties": {}}  # the project's option is not ours
    code, out, err = _inprocess(pytester, "--update-baseline", "--property-update-baseline", "--property-baseline",
                                "b.json", "--property-report", "rep")
    assert code == 0, out + err
    assert set(json.loads((tmp_path / "b.json").read_text())["properties"]) == {"mine.rate"}


def test_the_entry_point_alone_registers_no_short_spelling(pytester, installed):  # noqa: F811
    (pytester.path / "test_plain.py").write_text("def test_nothing():\n    pass\n")
    code, _, err = _inprocess(pytester, "--update-baseline")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --update-baseline" in err
    _, helped, _ = _inprocess(pytester, "--help")
    assert "--property-update-baseline-partial" in helped and "--property-call-timeout" in helped
    assert "  --update-baseline " not in helped


# --------------------------------------------------------------------------- items 4, 5: concurrent runs, full disks
INNER_TESTS = '''
import os
import pathlib
import time

import pytest
from properties.stats import Rate

pytestmark = pytest.mark.properties


def _wait_for_the_others():
    barrier = os.environ.get("BARRIER")
    if barrier:
        pathlib.Path("ready-" + os.environ["WHICH"]).write_text("ready")
        deadline = time.monotonic() + 120
        while not all(pathlib.Path("ready-" + name).exists() for name in barrier.split(",")):
            assert time.monotonic() < deadline, "the other run never arrived"
            time.sleep(0.05)


def test_a(property_report):
    property_report.rate("a.rate", Rate(int(os.environ.get("A", "5")), 10), "a: demo", summary=True)
    _wait_for_the_others()


def test_b(property_report):
    property_report.rate("b.rate", Rate(7, 10), "b: demo", summary=True)
    _wait_for_the_others()
'''

#: the fault injection: every rename sleeps SLOW_RENAME seconds; FAIL_RENAME="ENOSPC:text" fails
#: those whose target has text
INJECTION = '''
import errno
import os
import time

_REAL = {"replace": os.replace, "rename": os.rename}


def _faulty(name):
    def call(src, dst, *args, **kwargs):
        time.sleep(float(os.environ.get("SLOW_RENAME", "0")))
        code, _, where = os.environ.get("FAIL_RENAME", "").partition(":")
        if code and where in os.fspath(dst):
            number = getattr(errno, code)
            raise OSError(number, os.strerror(number), os.fspath(dst))
        return _REAL[name](src, dst, *args, **kwargs)
    return call


os.replace = _faulty("replace")
os.rename = _faulty("rename")
'''


def _project(directory: Path) -> None:
    (directory / "test_inner.py").write_text(INNER_TESTS)
    (directory / "conftest.py").write_text(INJECTION)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_concurrent_updates_with_slow_renames_keep_both_runs_rows_and_reports(tmp_path):
    _project(tmp_path)
    runs = [subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-p",
                              "properties.plugin", "--property-baseline", "baseline.json", "--update-baseline",
                              "--property-report", "rep", "-k", f"test_{which}"],
                             cwd=tmp_path, env=_env(WHICH=which, BARRIER="a,b", SLOW_RENAME=str(SLOW_RENAME_S)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for which in ("a", "b")]
    outputs = [run.communicate(timeout=INNER_TIMEOUT_S)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "baseline rewritten" in output
    assert set(json.loads((tmp_path / "baseline.json").read_text())["properties"]) == {"a.rate", "b.rate"}
    names = {r["name"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["properties"]}
    assert names in ({"a.rate"}, {"b.rate"})  # one run's complete report, the other's swapped out whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []  # no .rep.old-*, .rep.new-* or temporary baseline


@pytest.mark.parametrize("fault, broken", [("ENOSPC:", "both"), ("EPERM:baseline.json", "baseline")],
                         ids=["full-disk", "immutable-baseline"])
def test_a_file_that_cannot_be_written_at_the_end_is_named_and_fails_the_run(tmp_path, fault, broken):
    _project(tmp_path)
    report.write_baseline(tmp_path / "baseline.json", _rows("a.rate", "b.rate"),
                          {"a.rate": "test_inner.py::test_a", "b.rate": "test_inner.py::test_b"}, {})
    report.replace_report(tmp_path / "property-report", _rows("a.rate", "b.rate"), [], {"confidence": 0.99})
    before = _files(tmp_path)
    result = _pytest(tmp_path, "-p", "properties.plugin", "--property-baseline", "baseline.json", "--update-baseline",
                     FAIL_RENAME=fault, A="9")
    assert result.returncode == pytest.ExitCode.INTERNAL_ERROR, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "INTERNALERROR" not in result.stdout + result.stderr
    assert "a.rate" in result.stdout and "DTD property rates" in result.stdout  # the table is shown
    number = getattr(errno, fault.partition(":")[0])
    assert f"baseline NOT rewritten: baseline.json: [Errno {number}] {os.strerror(number)}" in result.stdout
    if broken == "both":
        assert f"report NOT written: {tmp_path / 'property-report'}: [Errno {number}]" in result.stdout
    else:
        assert "report: property-report/report.html" in result.stdout
    after = _files(tmp_path)
    assert after["baseline.json"] == before["baseline.json"]  # the old files stay
    if broken == "both":
        assert {k: v for k, v in after.items() if k.startswith("property-report")} == \
               {k: v for k, v in before.items() if k.startswith("property-report")}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_an_immutable_baseline_is_a_usage_error_at_start_up(tmp_path, monkeypatch):
    path = tmp_path / "baseline.json"
    path.write_text('{"properties": {}}\n')
    real_open = os.open

    def immutable(file, flags, *args, **kwargs):  # what the kernel answers for a chattr +i file
        if os.fspath(file) == str(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", immutable)
    problem = report.writable_problem(path, directory=False)
    monkeypatch.undo()
    assert problem is not None and "cannot be replaced" in problem and f"errno {errno.EPERM}" in problem
    path.chmod(0o444)  # only its mode: still replaceable (and the mode is kept, item 10)
    try:
        assert report.writable_problem(path, directory=False) is None
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- item 6: factory modules that do not import
#: a factory module that cannot be imported -> the message naming file, line and error; the command that shows it
BROKEN_MODULES = {
    "syntax-error": ("def subjects(:\n    pass\n", r"broken_syntax\.py, line 1: SyntaxError: ", "conform"),
    "raises-at-import": ("import os\n\nraise RuntimeError('no data here')\n",
                         r"broken_raises\.py, line 3: RuntimeError: no data here", "check"),
}
#: the README's usage-error exit codes of the two commands
USAGE_CODES = {"conform": 2, "check": 4}


def _cli(capsys, *args: str) -> tuple[int, str]:
    """``dtd-properties ARGS`` in this process (the current directory the user's): (exit code, stdout + stderr)."""
    from properties.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def user_directory(tmp_path, monkeypatch):
    """``tmp_path`` as the current directory; the console's sys.path entry undone afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.mark.parametrize("case", sorted(BROKEN_MODULES))
def test_a_factory_module_that_fails_to_import_is_a_usage_error_with_file_and_line(user_directory, capsys, case):
    tmp_path = user_directory
    source, expected, command = BROKEN_MODULES[case]
    name = "broken_" + case.split("-")[0]
    (tmp_path / f"{name}.py").write_text(source)
    with pytest.raises(ValueError, match=expected):
        load_factory(f"{name}:subjects", Subject, directory=tmp_path)
    sys.modules.pop(name, None)
    code, output = _cli(capsys, command, f"{name}:subjects")
    sys.modules.pop(name, None)
    assert code == USAGE_CODES[command], output
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert f"{name}.py, line" in output


# --------------------------------------------------------------------------- item 7: one name rule
@pytest.mark.parametrize("name", ["a/b", "a|b", "<b>x</b>", "a b", "a.b", ""])
def test_one_name_rule_is_checked_at_construction(name):
    with pytest.raises(ValueError, match="must be a non-empty name of letters, digits") as implementation:
        Implementation(name, lambda m, x, o: x, "z+")
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must be a non-empty name of letters, digits") as subject:
        Subject(name, net, torch.rand(3, 2))
    with pytest.raises(ValueError, match="must be a non-empty name of letters, digits"):
        RateKey("conformance", "finite", subject=name)
    assert str(implementation.value).split(" must be ", 1)[1] == str(subject.value).split(" must be ", 1)[1]


# --------------------------------------------------------------------------- item 8: names too long for the file system
def test_a_path_component_too_long_is_a_problem_not_a_crash(tmp_path):
    long = tmp_path / ("x" * 300)
    assert f"errno {errno.ENAMETOOLONG}" in report.writable_problem(long, directory=True)
    assert f"errno {errno.ENAMETOOLONG}" in report.writable_problem(long / "b.json", directory=False)
    with pytest.raises(ValueError, match=f"cannot be read: .*errno {errno.ENAMETOOLONG}"):
        report.read_baseline(long)


def test_a_report_path_too_long_is_a_usage_error(pytester):
    (pytester.path / "test_plain.py").write_text("def test_nothing():\n    pass\n")
    # was INTERNALERROR, rc 3
    code, out, err = _inprocess(pytester, "-p", "properties.plugin", "--property-report", "x" * 300)
    assert code == pytest.ExitCode.USAGE_ERROR, out + err
    assert f"errno {errno.ENAMETOOLONG}" in err and "INTERNALERROR" not in err


# --------------------------------------------------------------------------- item 9: one raising input, slow calls
def _raising_on_a_zero_row(model, x, output):
    if bool((x == 0).all(1).any()):
        raise RuntimeError("cannot explain an all-zero row")
    return lrp_zplus(model, x, output)


def test_an_exception_on_one_kind_of_input_fails_only_that_property():
    result = C.run(Implementation("zero_row", _raising_on_a_zero_row, "z+", stabilizer=0.0), seed=0, networks=2,
                   points=4)
    rates = {name.split(".", 2)[2]: rate for name, rate in result.rates.items()}
    assert rates["finite"].successes == 0 and rates["finite"].trials > 0
    assert all(rate.successes == rate.trials for prop, rate in rates.items() if prop != "finite")
    assert "raised: RuntimeError: cannot explain an all-zero row" in result.examples["conformance.zero_row.finite"]


def test_a_call_over_the_time_limit_fails_its_property_and_progress_is_reported():
    def slow_on_zeros(model, x, output):
        if bool((x == 0).all(1).any()):
            time.sleep(5)
        return lrp_zplus(model, x, output)

    lines: list[str] = []
    started = time.monotonic()
    result = C.run(Implementation("slow", slow_on_zeros, "z+", stabilizer=0.0), seed=0, networks=2, points=4,
                   call_timeout=0.2, progress=lines.append)
    assert time.monotonic() - started < 30  # interrupted: 7 calls of 5 s would take 35 s
    assert result.rates["conformance.slow.finite"].successes == 0
    assert result.rates["conformance.slow.equals_dtd.bias_negative"].successes > 0
    assert "longer than the limit of 0.2 s" in result.examples["conformance.slow.finite"]
    assert lines and all(line.startswith("conformance slow: ") and " calls, " in line for line in lines)
    with pytest.raises(ValueError, match="call_timeout must be > 0"):
        C.run(Implementation("slow", slow_on_zeros, "z+"), call_timeout=0)


# --------------------------------------------------------------------------- item 10: mode, escaping, --seed
def test_a_read_only_baseline_keeps_its_mode(tmp_path):
    path = tmp_path / "baseline.json"
    report.write_baseline(path, _rows("a"), {"a": "t.py::test"}, {})
    path.chmod(0o444)
    report.update_baseline(path, _rows("b"), {"b": "t.py::other"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert set(json.loads(path.read_text())["properties"]) == {"a", "b"}


def test_report_md_escapes_html_in_paths(tmp_path):
    report.write_report(tmp_path, _rows("a"), [], {"confidence": 0.99, "baseline": "<img src=x onerror=alert(1)>.json"})
    markdown = (tmp_path / "report.md").read_text()
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;.json" in markdown


@pytest.mark.parametrize("command", ["conform", "check"])
def test_an_out_of_range_seed_is_a_usage_error_naming_seed(user_directory, capsys, command):
    code, output = _cli(capsys, command, "mod:factory", "--seed", "-1")
    assert code == 2
    assert "argument --seed: must be an integer in [0, 2**32 - 1], got -1" in output
    assert "--property-seed" not in output


def _rows(*names):
    return [report.row(name, Rate(3, 10), f"{name}: demo", None) for name in names]


class _Reporter:
    def __init__(self, tty: bool):
        self.isatty = tty
        self.written: list[str] = []

    def write(self, text: str, flush: bool = False) -> None:
        self.written.append(text)


class _Config:
    def __init__(self, reporter: _Reporter, verbose: int = 0):
        self.pluginmanager = self
        self._reporter, self._verbose = reporter, verbose

    def get_plugin(self, name: str):
        return self._reporter if name == "terminalreporter" else None

    def getoption(self, name: str):
        return self._verbose


def test_the_progress_line_shows_on_a_terminal_only(monkeypatch):
    from properties.conformance.pytest_module import progress_writer

    monkeypatch.delenv("CI", raising=False)
    terminal = _Reporter(tty=True)
    show = progress_writer(_Config(terminal))
    show("conformance slow: network 3/60 (bias_free), 12 calls, 40 s")
    assert terminal.written and terminal.written[0].startswith("\rconformance slow: network 3/60")
    assert progress_writer(_Config(_Reporter(tty=False))) is None  # piped, a log file
    assert progress_writer(_Config(_Reporter(tty=True), verbose=-2)) is None  # -qq
    monkeypatch.setenv("CI", "1")
    assert progress_writer(_Config(_Reporter(tty=True))) is None


def test_the_default_call_timeout_is_one_number():
    import dtd_properties_pytest
    from properties import cli

    assert dtd_properties_pytest.DEFAULT_CALL_TIMEOUT == C.DEFAULT_CALL_TIMEOUT == cli.DEFAULT_CALL_TIMEOUT
