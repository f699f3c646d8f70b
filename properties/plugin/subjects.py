"""pytest side of users' subjects: ``pytest -m properties --dtd-subject MODULE:FACTORY``.

``MODULE:FACTORY`` names a function (importable from the current directory,
as ``python -m`` would import it) that returns one :class:`properties.Subject`
or a list of them.  It is called once per process (each pytest-xdist worker
calls it once; the controlling process never does).  Each subject becomes
test items, marked ``properties``, that evaluate it
(:func:`properties.subjects.subject.evaluate`) and record its rates, counts and plots
into the property report -- the same report, baseline and gate as the
suite's own rates -- and, unless the subject says ``findings=False`` or the
run ``--dtd-no-findings``, the field's findings on it
(:func:`properties.findings.evaluate_findings`).

A subject of one part (:attr:`properties.Subject.n_parts`) is one item,
``subject[NAME]``.  A subject of several parts is one item per part,
``subject[NAME.partI]`` (:func:`properties.subjects.subject.evaluate_part`), plus
``subject[NAME.findings]``; the parts' raw tallies are gathered (from every
xdist worker, local or ``--tx`` remote) and merged at the end of the session
(:func:`properties.subjects.subject.merge_parts`) into exactly the rates a serial run
reports, owned by ``subject[NAME]``.  A merged rate inconsistent with the
baseline fails the run (exit status 1, named in the summary) rather than an
item; a subject whose parts did not all run (deselected, failed,
interrupted) reports no rates, and the summary says so.

A user's run gates on the user's baseline only: unless
``--property-baseline FILE`` is given, ``--dtd-subject`` switches the
baseline from the project's ``properties/baseline.json`` to
:data:`USER_BASELINE` in the current directory (:mod:`properties.plugin`
decides it; the option is registered by the entry module
:mod:`dtd_properties_pytest`).  Without that file every rate
is reported as ``new`` and nothing fails; ``--update-baseline`` writes it.
Neuron draws use ``--property-seed`` (default 0, so a user's run repeats
exactly).

Registered by :mod:`properties.plugin` (its ``pytest_plugins``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..findings import evaluate_findings
from ..subjects.subject import Subject, SubjectPart, evaluate, evaluate_part, merge_parts
from ..usercode.factories import load_factory
from . import (
    DEFAULT_SUBJECT_SEED,
    SUBJECT_BASELINE,
    PropertyReport,
    _is_worker,
    _update_mode,
    _worker_dict,
    recorder_for,
    store,
)

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController

__all__ = ["load_subjects", "SubjectItem", "SubjectPartItem", "USER_BASELINE", "DEFAULT_SUBJECT_SEED", "WORKER_PARTS"]

#: a user's baseline, in the directory pytest (or ``dtd-properties check``) runs in
USER_BASELINE = SUBJECT_BASELINE

#: the key of a pytest-xdist worker's output that carries its subjects' parts to the controller
WORKER_PARTS = "dtd_subject_parts"

_SUBJECTS_KEY = pytest.StashKey[list]()
#: (nodeid, SubjectPart JSON) of the parts this process evaluated or received
_PARTS_KEY = pytest.StashKey[list[tuple[str, str]]]()


def load_subjects(spec: str, *, directory: Path | None = None) -> list[Subject]:
    """The :class:`Subject` (s) that ``MODULE:FACTORY`` returns, ``MODULE`` imported from ``directory`` (default: the
    current one) as ``python -m`` does; errors as :func:`properties.usercode.factories.load_factory` raises them."""
    return load_factory(spec, Subject, directory=directory)


class SubjectItem(pytest.Item):
    """One subject: evaluated and recorded into the property report when run."""

    def __init__(self, *, subject: Subject, spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subject = subject
        self.spec = spec
        self.add_marker("properties")

    def runtest(self) -> None:
        recorder = recorder_for(self)
        seed = _seed(self.config)
        if self.subject.n_parts == 1:
            evaluate(self.subject, seed=seed, confidence=recorder.confidence).record(recorder)
        if _findings(self.subject, self.config):
            evaluate_findings(self.subject, seed=seed, confidence=recorder.confidence).record(recorder)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self.spec, None, f"subject {self.subject.name} ({self.spec})"


class SubjectPartItem(pytest.Item):
    """One part of a split subject: its raw tallies, kept for the merge at the session's end (nothing recorded here)."""

    def __init__(self, *, subject: Subject, spec: str, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subject = subject
        self.spec = spec
        self.index = index
        self.add_marker("properties")

    def runtest(self) -> None:
        part = evaluate_part(self.subject, self.index, seed=_seed(self.config))
        _parts(self.config).append((self.nodeid, part.to_json()))

    def reportinfo(self) -> tuple[str, int | None, str]:
        start, stop = self.subject.part_range(self.index)
        return self.spec, None, (f"subject {self.subject.name}, part {self.index + 1} of {self.subject.n_parts} "
                                 f"(points {start}-{stop - 1}; {self.spec})")


def _seed(config: pytest.Config) -> int:
    seed = config.getoption("--property-seed")
    return DEFAULT_SUBJECT_SEED if seed is None else seed


def _findings(subject: Subject, config: pytest.Config) -> bool:
    return subject.findings and not config.getoption("--dtd-no-findings")


def _parts(config: pytest.Config) -> list[tuple[str, str]]:
    if _PARTS_KEY not in config.stash:
        config.stash[_PARTS_KEY] = []
    return config.stash[_PARTS_KEY]


def merged_nodeid(name: str) -> str:
    """The owner of a split subject's merged rows (the node id its unsplit item would have)."""
    return f"subject[{name}]"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: WorkerController, error: object) -> None:
    """xdist controller: keep the parts a worker evaluated."""
    text = getattr(node, "workeroutput", {}).get(WORKER_PARTS)
    if text:
        _parts(node.config).extend(tuple(entry) for entry in json.loads(text))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    """A worker ships its parts; the controlling process (or a serial run) merges every subject's parts and records them
    before :mod:`properties.plugin` writes the report."""
    config = session.config
    parts = config.stash.get(_PARTS_KEY, [])
    if _is_worker(config):
        _worker_dict(config, "workeroutput")[WORKER_PARTS] = json.dumps(parts)
        return
    by_subject: dict[str, list[SubjectPart]] = {}
    for _, text in parts:
        part = SubjectPart.from_json(text)
        by_subject.setdefault(part.info["name"], []).append(part)
    run = store(config)
    for name, found in sorted(by_subject.items()):
        expected = found[0].info["n_parts"]
        if len({p.index for p in found}) != expected:
            run.notes.append(f"subject {name}: {len({p.index for p in found})} of its {expected} parts "
                             "ran (deselected, failed or interrupted): its rates are not reported")
            continue
        try:
            result = merge_parts(found)
        except ValueError as error:
            run.notes.append(f"subject {name}: its parts were not merged: {error}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            continue
        recorder = PropertyReport(run, merged_nodeid(name), gate=_update_mode(config) is None)
        result.record(recorder)
        run.completed.add(merged_nodeid(name))
        if recorder.regressions:
            run.notes.append(f"subject {name} (merged from {expected} parts): {len(recorder.regressions)} rate(s) "
                             "inconsistent with the baseline:\n  " + "\n  ".join(recorder.regressions))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    specs = config.getoption("--dtd-subject")
    if not specs:
        return
    seen: dict[str, str] = {}
    for spec in specs:
        try:
            subjects = load_subjects(spec, directory=Path(config.invocation_params.dir))
        except (TypeError, ValueError) as error:
            raise pytest.UsageError(f"subject factory {spec}: {error}") from None
        for subject in subjects:
            if subject.name in seen:
                raise pytest.UsageError(
                    f"subject name {subject.name!r} comes from both {seen[subject.name]} and {spec}"
                )
            seen[subject.name] = spec
            if subject.n_parts == 1:
                items.append(SubjectItem.from_parent(session, name=f"subject[{subject.name}]", subject=subject,
                                                     spec=spec))
                continue
            for index in range(subject.n_parts):
                items.append(
                    SubjectPartItem.from_parent(
                        session, name=f"subject[{subject.name}.part{index}]", subject=subject, spec=spec, index=index
                    )
                )
            if _findings(subject, config):
                items.append(SubjectItem.from_parent(session, name=f"subject[{subject.name}.findings]", subject=subject,
                                                     spec=spec))
