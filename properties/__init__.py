"""The DTD property-verification suite: one subpackage per room.

* :mod:`properties.measure` -- how a property is judged and counted (checks, rates and intervals, rate keys,
  thresholds, gates);
* :mod:`properties.generate` -- what the sweeps draw (strategies, CNN / ResNet architectures, rule variants);
* :mod:`properties.subjects` -- models judged as subjects (a user's model and data, the trained digits networks);
* :mod:`properties.conformance` -- the conformance kit for LRP implementations (adapters, agreement, claims, replicas);
* :mod:`properties.findings` -- the field's other findings (insensitivity, invariance, randomisation);
* :mod:`properties.usercode` -- loading and calling someone else's code (``MODULE:FACTORY``, a clean global state);
* :mod:`properties.plugin`, :mod:`properties.report`, :mod:`properties.cli` -- the pytest plugin, the report, the
  ``dtd-properties`` console script;
* ``properties/suite/`` -- the suite's own property tests, gated by ``properties/baseline.json``.

``properties.Subject`` (a user's model and data, :mod:`properties.subjects.subject`)
and ``properties.Implementation`` (an LRP implementation under test,
:mod:`properties.conformance`) are imported on first use, so loading the
pytest plugin or importing the package stays light.  The modules' old names
(``properties.keys``, ``properties.summary``, ...) are answered by
:mod:`properties._moved`.
"""

from typing import TYPE_CHECKING, Any

from ._moved import install as _install_moved_names

if TYPE_CHECKING:  # imported on first use (__getattr__): importing properties imports no torch
    from .conformance import Implementation
    from .subjects.subject import Subject

__all__ = ["Subject", "Implementation"]

_install_moved_names()  # properties.keys, properties.summary, ...: the modules' old names (see properties._moved)


def __getattr__(name: str) -> Any:
    if name == "Subject":
        from .subjects.subject import Subject

        return Subject
    if name == "Implementation":
        from .conformance import Implementation

        return Implementation
    raise AttributeError(f"module 'properties' has no attribute {name!r}")
