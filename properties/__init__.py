"""The DTD property-verification suite: strategies, checks, statistics, report.

``properties.Subject`` (a user's model and data, :mod:`properties.subject`) is
imported on first use, so that importing the package stays light.
"""

__all__ = ["Subject"]


def __getattr__(name):
    if name == "Subject":
        from .subject import Subject

        return Subject
    raise AttributeError(f"module 'properties' has no attribute {name!r}")
