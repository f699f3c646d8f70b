"""Argument checks shared by :mod:`dtd` and :mod:`properties`.

One rule everywhere: a value of the wrong *type* is a ``TypeError``, a value
of the right type but outside what is allowed is a ``ValueError``.  Every
message names the argument and quotes what was given.  ``bool`` is never
accepted where a number is asked for (``True`` is an ``int`` in Python, but a
caller who passes it has made a mistake).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_int",
    "check_number",
    "check_bool",
    "check_probability",
    "check_seed",
    "check_finite_layer",
    "all_finite",
    "overflow_error",
    "SEED_LIMIT",
]

#: the largest seed torch's generators and numpy accept without overflow (a signed 64-bit value)
SEED_LIMIT = 2**63 - 1


def check_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int; ``TypeError`` unless it is an int (not a bool),
    ``ValueError`` outside ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a float; ``TypeError`` unless it is an int or float (not a bool).

    ``ValueError`` for NaN, for an infinite value when ``finite``, and outside
    the bounds (``strict_*``: the bound itself is excluded).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ValueError(f"{name} must be a finite number, got {number!r}")
    if minimum is not None and (number <= minimum if strict_minimum else number < minimum):
        raise ValueError(f"{name} must be {'>' if strict_minimum else '>='} {minimum:g}, got {number!r}")
    if maximum is not None and (number >= maximum if strict_maximum else number > maximum):
        raise ValueError(f"{name} must be {'<' if strict_maximum else '<='} {maximum:g}, got {number!r}")
    return number


def check_probability(value: object, name: str) -> float:
    """A number strictly between 0 and 1 (a confidence, an acceptance rate)."""
    return check_number(value, name, minimum=0.0, maximum=1.0, strict_minimum=True, strict_maximum=True)


def check_bool(value: object, name: str) -> bool:
    """``value`` itself; ``TypeError`` unless it is a bool (``'no'`` or ``0`` are mistakes, not False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_seed(value: object, name: str = "seed") -> int:
    """A seed for a local generator: an int in ``[0, 2**63 - 1]``."""
    return check_int(value, name, minimum=0, maximum=SEED_LIMIT)


def overflow_error(layer: int | None, dtype: torch.dtype, what: str) -> ValueError:
    """The error for values a computation produced that are no longer finite (overflow, or inf - inf).

    Names the layer and the dtype and says how to fix it; never return such
    values as results (NaN or all-zero relevance would pass silently).
    """
    where = "the network" if layer is None else f"layer {layer}"
    kind = str(dtype).replace("torch.", "")
    if dtype == torch.float64:
        fix = "rescale the weights, inputs or rule parameters"
    else:
        fix = "use float64 or rescale the weights or inputs"
    return ValueError(f"{where} overflows {kind}: {what} are not finite; {fix}")


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry of ``values`` is finite.

    One sum answers the common case (NaN and inf survive a sum, so a finite
    sum means finite entries; it is several times cheaper than an
    element-wise ``isfinite``); only a sum that is not finite -- a bad entry,
    or finite entries whose sum overflows -- is settled entry by entry.
    """
    if math.isfinite(values.sum().item()):
        return True
    return bool(torch.isfinite(values).all())


def check_finite_layer(values: torch.Tensor, layer: int | None, what: str) -> torch.Tensor:
    """``values`` itself; :func:`overflow_error` unless every entry is finite (:func:`all_finite`)."""
    if not all_finite(values):
        raise overflow_error(layer, values.dtype, what)
    return values
