"""The DTD property-verification suite: strategies, checks, statistics, report, and the conformance kit.

``properties.Implementation`` (an LRP implementation under test, see
:mod:`properties.conformance`) is imported on first use, so loading the
pytest plugin does not import the kit.
"""

__all__ = ["Implementation"]


def __getattr__(name: str):
    if name == "Implementation":
        from .conformance import Implementation

        return Implementation
    raise AttributeError(f"module 'properties' has no attribute {name!r}")
