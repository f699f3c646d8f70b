"""What a measurement records into: the interface of the ``property_report`` fixture.

:class:`properties.plugin.PropertyReport` implements it; the code that measures
(:mod:`properties.findings`, :mod:`properties.conformance`) is typed against this
protocol, so it needs no import of the plugin that wires it into pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .keys import RateKey
from .stats import Rate

__all__ = ["Recorder"]


class Recorder(Protocol):
    """Rates, counts and plot data of one test, for the report (see :class:`properties.plugin.PropertyReport`)."""

    @property
    def confidence(self) -> float: ...

    def rate(self, name: str | RateKey, rate: Rate, description: str | None = None, *, summary: bool = False,
             example: str | None = None) -> dict[str, Any]: ...

    def count(self, label: str, value: float) -> None: ...

    def note(self, label: str, text: str) -> None: ...

    def histogram(self, file: str, title: str, series: Mapping[str, Sequence[float]], *, xlabel: str = "",
                  caption: str = "", bins: int = 30) -> None: ...

    def bars(self, file: str, title: str, rows: Sequence[str], labels: Sequence[str], *, xlabel: str = "",
             caption: str = "") -> None: ...

    def images(self, file: str, title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
               caption: str = "") -> None: ...

    def lines(self, file: str, title: str, panels: Sequence[Mapping[str, Any]], *, xlabel: str = "",
              caption: str = "") -> None: ...
