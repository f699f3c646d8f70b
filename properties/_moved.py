"""Old module names of the suite that moved into subpackages keep working.

The report's modules live in :mod:`properties.report` and the console
script's in :mod:`properties.cli`; ``import properties.summary`` (or
``from properties import figures``) gives the very module object of the new
place, and ``python -m properties.subject_cli check ...`` runs the new
module's ``main``.  The finder sits at the front of ``sys.meta_path`` (so
that no stale copy of an old file, e.g. an editable install of an older
checkout, wins) and answers only for the names in :data:`MOVED`, so it
changes nothing for any other import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__all__ = ["MOVED", "install"]

#: old module name -> new module name
MOVED = {
    "properties.sections": "properties.report.sections",
    "properties.summary": "properties.report.summary",
    "properties.markdown": "properties.report.markdown",
    "properties.htmlpage": "properties.report.htmlpage",
    "properties.figures": "properties.report.figures",
    "properties.tables": "properties.report.tables",
    "properties.subject_cli": "properties.cli.check",
    "properties.keys": "properties.measure.keys",
    "properties.stats": "properties.measure.stats",
    "properties.thresholds": "properties.measure.thresholds",
    "properties.gates": "properties.measure.gates",
    "properties.checks": "properties.measure.checks",
    "properties.strategies": "properties.generate.strategies",
    "properties.architectures": "properties.generate.architectures",
    "properties.variants": "properties.generate.variants",
    "properties.factories": "properties.usercode.factories",
    "properties.callstate": "properties.usercode.callstate",
    "properties.subject": "properties.subjects.subject",
    "properties.digits": "properties.subjects.digits",
    "properties.conformance_suite": "properties.conformance.pytest_module",
    "properties.adapters": "properties.conformance.adapters",
    "properties.agreement": "properties.conformance.agreement",
    "properties.claims": "properties.conformance.claims",
    "properties.replicas": "properties.conformance.replicas",
    "properties.insensitivity": "properties.findings.insensitivity",
    "properties.invariance": "properties.findings.invariance",
    "properties.randomisation": "properties.findings.randomisation",
    "properties.similarity": "properties.findings.similarity",
    "properties.papers": "properties.report.papers",
    "properties.subject_plugin": "properties.plugin.subjects",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (the same object), or runs the new module's ``main`` under ``-m``."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__  # the import machinery sets the alias spec on it next: restored in exec_module
        return module

    def exec_module(self, module) -> None:
        """The new module is imported and executed already; give it back its own spec."""
        module.__spec__ = self.spec

    def get_code(self, name: str):
        """What ``python -m OLD`` runs: the new module's ``main`` with the command-line arguments."""
        return compile(f"import sys\nfrom {self.new} import main\nsys.exit(main())\n", f"<{name}: moved to {self.new}>", "exec")

    def is_package(self, name: str) -> bool:
        return False


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(new))


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
