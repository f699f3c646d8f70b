"""pytest side of users' subjects: ``pytest -m properties --dtd-subject MODULE:FACTORY``.

``MODULE:FACTORY`` names a function (importable from the current directory,
as ``python -m`` would import it) that returns one :class:`properties.Subject`
or a list of them.  Each subject becomes one test item, marked
``properties``, that evaluates it (:func:`properties.subject.evaluate`) and
records its rates, counts and plots into the property report -- the same
report, baseline and gate as the suite's own rates -- and, unless the subject
says ``findings=False`` or the run ``--dtd-no-findings``, the field's
findings on it (:func:`properties.findings.evaluate_findings`).

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

from pathlib import Path
from typing import Optional

import pytest

from .factories import load_factory
from .findings import evaluate_findings
from .plugin import SUBJECT_BASELINE, recorder_for
from .subject import Subject, evaluate

__all__ = ["load_subjects", "SubjectItem", "USER_BASELINE", "DEFAULT_SUBJECT_SEED"]

#: a user's baseline, in the directory pytest (or ``dtd-properties check``) runs in
USER_BASELINE = SUBJECT_BASELINE
#: seed of the neuron draws when ``--property-seed`` is not given
DEFAULT_SUBJECT_SEED = 0

_SUBJECTS_KEY = pytest.StashKey[list]()


def load_subjects(spec: str, *, directory: Optional[Path] = None) -> list[Subject]:
    """The :class:`Subject` (s) that ``MODULE:FACTORY`` returns, ``MODULE`` imported from ``directory`` (default: the
    current one) as ``python -m`` does; errors as :func:`properties.factories.load_factory` raises them."""
    return load_factory(spec, Subject, directory=directory)


class SubjectItem(pytest.Item):
    """One subject: evaluated and recorded into the property report when run."""

    def __init__(self, *, subject: Subject, spec: str, **kwargs):
        super().__init__(**kwargs)
        self.subject = subject
        self.spec = spec
        self.add_marker("properties")

    def runtest(self) -> None:
        recorder = recorder_for(self)
        seed = self.config.getoption("--property-seed")
        seed = DEFAULT_SUBJECT_SEED if seed is None else seed
        result = evaluate(self.subject, seed=seed, confidence=recorder.confidence)
        result.record(recorder)
        if self.subject.findings and not self.config.getoption("--dtd-no-findings"):
            evaluate_findings(self.subject, seed=seed, confidence=recorder.confidence).record(recorder)

    def reportinfo(self):
        return self.spec, None, f"subject {self.subject.name} ({self.spec})"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    specs = config.getoption("--dtd-subject")
    if not specs:
        return
    seen = {}
    for spec in specs:
        try:
            subjects = load_subjects(spec, directory=Path(config.invocation_params.dir))
        except (TypeError, ValueError) as error:
            raise pytest.UsageError(f"subject factory {spec}: {error}") from None
        for subject in subjects:
            if subject.name in seen:
                raise pytest.UsageError(f"subject name {subject.name!r} comes from both {seen[subject.name]} and {spec}")
            seen[subject.name] = spec
            items.append(SubjectItem.from_parent(session, name=f"subject[{subject.name}]", subject=subject, spec=spec))
