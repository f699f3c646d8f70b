"""The DTD property-verification suite: strategies, checks, statistics, report, users' subjects and the conformance kit.

``properties.Subject`` (a user's model and data, :mod:`properties.subjects.subject`)
and ``properties.Implementation`` (an LRP implementation under test,
:mod:`properties.conformance`) are imported on first use, so loading the
pytest plugin or importing the package stays light.
"""

from ._moved import install as _install_moved_names

__all__ = ["Subject", "Implementation"]

_install_moved_names()  # properties.report.summary, properties.cli.check, ...: the modules' old names (see properties._moved)


def __getattr__(name: str):
    if name == "Subject":
        from .subjects.subject import Subject

        return Subject
    if name == "Implementation":
        from .conformance import Implementation

        return Implementation
    raise AttributeError(f"module 'properties' has no attribute {name!r}")
