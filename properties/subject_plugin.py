"""pytest side of users' subjects: ``pytest -m properties --dtd-subject MODULE:FACTORY``.

``MODULE:FACTORY`` names a function (importable from the current directory,
as ``python -m`` would import it) that returns one :class:`properties.Subject`
or a list of them.  Each subject becomes one test item, marked
``properties``, that evaluates it (:func:`properties.subject.evaluate`) and
records its rates, counts and plots into the property report -- the same
report, baseline and gate as the suite's own rates.

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

import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import pytest

from .plugin import SUBJECT_BASELINE
from .subject import Subject, evaluate

__all__ = ["load_subjects", "SubjectItem", "USER_BASELINE", "DEFAULT_SUBJECT_SEED"]

#: a user's baseline, in the directory pytest (or ``dtd-properties check``) runs in
USER_BASELINE = SUBJECT_BASELINE
#: seed of the neuron draws when ``--property-seed`` is not given
DEFAULT_SUBJECT_SEED = 0

_SUBJECTS_KEY = pytest.StashKey[list]()


def load_subjects(spec: str, *, directory: Optional[Path] = None) -> list[Subject]:
    """Import ``MODULE:FACTORY`` and call the factory; its Subject(s) as a list.

    ``MODULE`` is imported with ``directory`` (default: the current one)
    first on ``sys.path``, as ``python -m`` does.  Every failure is a
    ``ValueError``/``TypeError`` naming what was given and what was expected.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a subject factory must be given as 'MODULE:FACTORY' (a str), got {type(spec).__name__}")
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected MODULE:FACTORY (e.g. 'my_model:subjects'), got {spec!r}")
    directory = str(Path(directory or os.getcwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"cannot import module {module_name!r} of {spec!r}: {error}; MODULE must be importable from {directory} "
            "(a file MODULE.py there, or a dotted module path), as with python -m"
        ) from None
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ValueError(
            f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute {attribute!r}; expected a function "
            "returning a properties.Subject or a list of them"
        ) from None
    if not callable(factory):
        raise TypeError(f"{spec} is a {type(factory).__name__}, not a function; expected a function returning a properties.Subject or a list of them")
    try:
        made = factory()
    except (TypeError, ValueError) as error:
        raise type(error)(f"factory {spec} failed: {error}") from error
    subjects = [made] if isinstance(made, Subject) else made
    if not isinstance(subjects, (list, tuple)) or not all(isinstance(s, Subject) for s in subjects):
        got = type(made).__name__ if not isinstance(made, (list, tuple)) else f"a {type(made).__name__} holding {sorted({type(s).__name__ for s in made})}"
        raise TypeError(f"factory {spec} returned {got}; expected a properties.Subject or a list of Subjects")
    if not subjects:
        raise ValueError(f"factory {spec} returned an empty list; expected at least one properties.Subject")
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ValueError(f"factory {spec} returned subjects with the same name: {names}; names must differ (they name the rates)")
    return list(subjects)


class SubjectItem(pytest.Item):
    """One subject: evaluated and recorded into the property report when run."""

    def __init__(self, *, subject: Subject, spec: str, **kwargs):
        super().__init__(**kwargs)
        self.subject = subject
        self.spec = spec
        self.add_marker("properties")

    def runtest(self) -> None:
        from .plugin import recorder_for

        recorder = recorder_for(self)
        seed = self.config.getoption("--property-seed")
        result = evaluate(self.subject, seed=DEFAULT_SUBJECT_SEED if seed is None else seed, confidence=recorder.confidence)
        result.record(recorder)

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
            raise pytest.UsageError(f"--dtd-subject {spec}: {error}") from None
        for subject in subjects:
            if subject.name in seen:
                raise pytest.UsageError(f"subject name {subject.name!r} comes from both {seen[subject.name]} and {spec}")
            seen[subject.name] = spec
            items.append(SubjectItem.from_parent(session, name=f"subject[{subject.name}]", subject=subject, spec=spec))
