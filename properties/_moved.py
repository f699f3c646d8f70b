"""Old module names of the suite that moved into subpackages keep working: silently, or with a warning.

``import properties.stats`` (or ``from properties import figures``) gives the
very module object of the new place, and ``python -m properties.subject_cli
check ...`` runs the new module's ``main``.  The finder sits at the front of
``sys.meta_path`` (so that no stale copy of an old file, e.g. an editable
install of an older checkout, wins) and answers only for the names in
:data:`MOVED`, so it changes nothing for any other import.

Two kinds of old name:

* :data:`STABLE` -- names a user's own code or command line is documented to
  use (``properties.keys.RateKey``, ``properties.checks.root_outcomes``,
  ``properties.stats.Rate`` and ``properties.strategies`` in a property test of
  one's own, ``properties.subject.check_model`` in a subject factory,
  ``dtd-properties conform properties.adapters:shipped_implementations``):
  they stay, without a warning;
* every other old name imports with a ``DeprecationWarning`` that names the new
  module and the release that removes the old name (:data:`REMOVED_IN`).

Old names not listed here are gone: the suite's own test modules
(``properties.test_*``, now ``properties.suite.test_*``) and the kit's pytest
module (``properties.conformance_suite``, now
``properties.conformance.pytest_module``), which the plugin collects by path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

__all__ = ["MOVED", "STABLE", "REMOVED_IN", "install"]

#: the release of dtd-properties that removes the deprecated old names (every name of MOVED not in STABLE)
REMOVED_IN = "0.3.0"

#: old module name -> new module name
MOVED = {
    # the report's modules (properties/report/) and the console script's (properties/cli/)
    "properties.sections": "properties.report.sections",
    "properties.summary": "properties.report.summary",
    "properties.markdown": "properties.report.markdown",
    "properties.htmlpage": "properties.report.htmlpage",
    "properties.figures": "properties.report.figures",
    "properties.tables": "properties.report.tables",
    "properties.papers": "properties.report.papers",
    "properties.subject_cli": "properties.cli.check",
    # the measurement core
    "properties.keys": "properties.measure.keys",
    "properties.stats": "properties.measure.stats",
    "properties.thresholds": "properties.measure.thresholds",
    "properties.gates": "properties.measure.gates",
    "properties.checks": "properties.measure.checks",
    # what the sweeps draw
    "properties.strategies": "properties.generate.strategies",
    "properties.architectures": "properties.generate.architectures",
    "properties.variants": "properties.generate.variants",
    # someone else's code
    "properties.factories": "properties.usercode.factories",
    "properties.callstate": "properties.usercode.callstate",
    # subjects
    "properties.subject": "properties.subjects.subject",
    "properties.digits": "properties.subjects.digits",
    # the conformance kit (properties.conformance itself kept its name: it is the package now)
    "properties.adapters": "properties.conformance.adapters",
    "properties.agreement": "properties.conformance.agreement",
    "properties.claims": "properties.conformance.claims",
    "properties.replicas": "properties.conformance.replicas",
    # the field's findings (properties.findings kept its name)
    "properties.insensitivity": "properties.findings.insensitivity",
    "properties.invariance": "properties.findings.invariance",
    "properties.randomisation": "properties.findings.randomisation",
    "properties.similarity": "properties.findings.similarity",
    # the pytest plugin (properties.plugin kept its name)
    "properties.subject_plugin": "properties.plugin.subjects",
}

#: old names that stay without a warning: the ones users' own code and commands are documented to use
STABLE = frozenset({
    "properties.keys",
    "properties.checks",
    "properties.stats",
    "properties.strategies",
    "properties.subject",
    "properties.adapters",
})


def deprecation(old: str) -> str:
    """The warning an old name gives (``""`` for a stable one)."""
    if old in STABLE:
        return ""
    return f"{old} moved to {MOVED[old]}; the old name is removed in dtd-properties {REMOVED_IN}"


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (the same object), or runs
    the new module's ``main`` under ``-m``."""

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        message = deprecation(self.old)
        if message:
            # stacklevel 2 skips the import machinery's own frames: the warning names the importing line
            warnings.warn(message, DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__  # the import machinery sets the alias spec on it next: restored in exec_module
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """The new module is imported and executed already; give it back its own spec."""
        module.__spec__ = self.spec

    def get_code(self, name: str) -> types.CodeType:
        """What ``python -m OLD`` runs: a warning where one is due, then the new module's ``main``."""
        message = deprecation(self.old)
        warn = f"import warnings\nwarnings.warn({message!r}, DeprecationWarning)\n" if message else ""
        code = f"import sys\n{warn}from {self.new} import main\nsys.exit(main())\n"
        return compile(code, f"<{name}: moved to {self.new}>", "exec")

    def is_package(self, name: str) -> bool:
        return False


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(name)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(name, new))


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
