"""Absolute gates: what fails a run even without a baseline.

The baseline gate (:func:`properties.measure.stats.compare`) only fails a rate that
moved; on a first run every rate is ``new`` and nothing fails.  Two absolute
gates hold from the first run on:

* **Must-hold properties** (:data:`MUST_HOLD`): every LRP implementation must
  satisfy these in every trial, whatever rule it claims -- it leaves the
  model and the input as they were, returns finite relevance, in the input's
  dtype and on its device, and one point's relevance does not depend on its
  batch mates.  A ``conformance`` row whose *outcome* (the property part of its
  :class:`~properties.measure.keys.RateKey`, whatever population or architecture
  follows it: ``conformance.mylib.finite``, ``conformance.mylib.finite.cnn``,
  ...) is one of them fails below 100 %.
* **Floors** a user requires (:class:`Floor`, ``PATTERN>=VALUE``): every row
  whose name matches the glob ``PATTERN`` (:func:`fnmatch.fnmatchcase`: ``*``
  also crosses dots) must have a rate -- the point estimate
  ``successes / trials`` -- of at least ``VALUE``.  The point estimate, not
  the interval: a floor says what share the run must show, and a rate of
  exactly ``VALUE`` passes however few trials it has (ask for more trials, or
  a higher floor, for a margin).  A pattern that matches no row of the run is
  a usage error: a floor that checks nothing would pass silently.

A rate without data (0 trials) fails both gates: the property was not shown
to hold.  A row that fails either gate gets the report status
``below_floor`` (:data:`BELOW_FLOOR`), which fails the test that recorded it,
and so the run, also while the baseline is being updated (an update then
leaves the baseline as it was).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeGuard

from .keys import RateKey

__all__ = ["MUST_HOLD", "BELOW_FLOOR", "Floor", "parse_floor", "parse_floors", "must_hold", "failed_floors",
           "unmatched", "nearest", "FLOOR_FORM"]

#: conformance properties every implementation must satisfy in every trial (even on a first run, without a baseline)
MUST_HOLD = ("no_side_effects", "finite", "dtype_device", "batch_independent")
#: the report status of a row below a floor or a must-hold property below 100 %
BELOW_FLOOR = "below_floor"
#: the accepted form of a floor, for error messages
FLOOR_FORM = "PATTERN>=VALUE, e.g. 'conformance.mylib_*.equals_dtd.*>=0.99' (a glob on rate names; VALUE in [0, 1])"


@dataclasses.dataclass(frozen=True)
class Floor:
    """A required minimum of the rates whose names match ``pattern`` (a glob); ``text`` is how the user wrote it."""

    pattern: str
    minimum: float
    text: str

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def holds(self, row: Mapping) -> bool:
        """Whether ``row``'s point estimate is at least the floor (no data: it does not)."""
        return row.get("rate") is not None and row["rate"] >= self.minimum

    def __str__(self) -> str:
        return f"{self.pattern}>={self.minimum:g}"


def parse_floor(text: str) -> Floor:
    """``"PATTERN>=VALUE"`` as a :class:`Floor`; ``ValueError`` naming the problem and the accepted form."""
    if not isinstance(text, str):
        raise TypeError(f"a floor must be a str of the form {FLOOR_FORM}; got {type(text).__name__}")
    pattern, sep, value = text.rpartition(">=")
    pattern, value = pattern.strip(), value.strip()
    if not sep:
        raise ValueError(f"floor {text!r} has no '>=': the accepted form is {FLOOR_FORM}")
    if not pattern:
        raise ValueError(f"floor {text!r} has no pattern before '>=': the accepted form is {FLOOR_FORM}")
    if any(c in pattern for c in "<>= "):
        raise ValueError(f"floor {text!r}: the pattern {pattern!r} holds '<', '>', '=' or a space; only '>=' compares "
                         f"(the accepted form is {FLOOR_FORM})")
    try:
        minimum = float(value)
    except ValueError:
        raise ValueError(f"floor {text!r}: {value!r} is not a number; the accepted form is {FLOOR_FORM}") from None
    if math.isnan(minimum) or not 0 <= minimum <= 1:
        hint = f" (a share, not a percentage: {minimum / 100:g} for {minimum:g} %)" if 1 < minimum <= 100 else ""
        raise ValueError(f"floor {text!r}: the value {value} must lie in "
                         f"[0, 1]{hint}; the accepted form is {FLOOR_FORM}")
    return Floor(pattern, minimum, text)


def parse_floors(texts: Iterable[str] | None) -> list[Floor]:
    """Every ``PATTERN>=VALUE`` of ``texts`` (None: none), in order."""
    return [parse_floor(text) for text in (texts or ())]


def must_hold(key: RateKey | None) -> TypeGuard[RateKey]:
    """Whether a row with this key is a must-hold property (family ``conformance``, outcome in :data:`MUST_HOLD`)."""
    return key is not None and key.family == "conformance" and key.outcome in MUST_HOLD


def failed_floors(row: Mapping, key: RateKey | None, floors: Sequence[Floor]) -> list[str]:
    """Why ``row`` fails the absolute gates, one phrase per failed gate (empty: it passes them)."""
    out = []
    if must_hold(key) and not (row.get("trials") and row["successes"] == row["trials"]):
        out.append(f"{key.outcome} must hold in every trial (properties.measure.gates.MUST_HOLD: every implementation "
                   "must satisfy it, with or without a baseline)")
    for floor in floors:
        if floor.matches(row["name"]) and not floor.holds(row):
            out.append(f"below the floor --require '{floor.text}' (the rate must be >= {100 * floor.minimum:g} %)")
    return out


def unmatched(floors: Sequence[Floor], names: Iterable[str]) -> list[Floor]:
    """The floors that match none of ``names``."""
    names = list(names)
    return [floor for floor in floors if not any(floor.matches(name) for name in names)]


def nearest(floor: Floor, names: Iterable[str], count: int) -> list[str]:
    """Up to ``count`` of ``names`` whose start agrees longest with the pattern's fixed start (before its first
    wildcard), then by name: the rows a mistyped floor most likely meant."""
    head = re.split(r"[*?\[]", floor.pattern, maxsplit=1)[0]

    def agreed(name: str) -> int:
        return len(os.path.commonprefix([head, name]))

    return sorted(names, key=lambda name: (-agreed(name), name))[:count]
