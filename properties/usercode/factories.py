"""``MODULE:FACTORY``: how a user hands the suite their subjects or implementations.

One loader for ``dtd-properties check`` / ``--dtd-subject`` (factories returning
:class:`properties.Subject` s) and ``dtd-properties conform`` /
``--dtd-implementation`` (factories returning :class:`properties.Implementation` s).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path

__all__ = ["load_factory"]


#: the hint an error raised inside a factory ends with: how to refuse a model before training it
_EARLIER = ("; to find a model DTD cannot lower before training it, call "
            "properties.subjects.subject.check_model(model, input_shape) at the top of the factory")


def load_factory(spec: str, expected: type, *, directory: Path | None = None) -> list:
    """Import ``MODULE:FACTORY`` and call the factory; the ``expected`` object(s) it returns, as a list.

    ``MODULE`` is imported with ``directory`` (default: the current one)
    first on ``sys.path``, as ``python -m`` does.  The factory returns one
    ``expected`` or a non-empty list of them with distinct ``.name`` s (they
    name the rates).  Raises ``ValueError`` for a malformed spec, a module
    that cannot be imported, a missing attribute, an empty list or repeated
    names, and ``TypeError`` for a factory that is not callable or returns
    anything else -- each naming what was given and what was expected.  An
    error raised by the factory itself comes back as a ``ValueError`` (a
    ``TypeError`` stays one) naming the spec and the original error.
    """
    what = f"properties.{expected.__name__}"
    if not isinstance(spec, str):
        raise TypeError(f"a factory must be given as 'MODULE:FACTORY' (a str), got {type(spec).__name__} {spec!r}")
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute or ":" in attribute:
        raise ValueError(f"expected MODULE:FACTORY (e.g. 'mymodule:factory'), got {spec!r}")
    here = str(Path(directory or os.getcwd()).resolve())
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name != module_name and not module_name.startswith(error.name + "."):
            raise ValueError(f"importing module {module_name!r} of {spec!r} failed: "
                             f"{_where(error)}ModuleNotFoundError: {error} (a module it imports is not "
                             "installed)") from None
        raise ValueError(
            f"cannot import module {module_name!r} of {spec!r}: {error}; MODULE must be importable from {here} "
            f"(a file {module_name.replace('.', '/')}.py or a package there), as with python -m"
        ) from None
    except SyntaxError as error:  # the user's file: a usage error showing file, line and the error, not a crash
        line = f"\n    {error.text.rstrip()}" if error.text else ""
        raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {error.filename}, line {error.lineno}: "
                         f"{type(error).__name__}: {error.msg}{line}") from None
    except Exception as error:  # raised while the module ran at import
        raise ValueError(f"importing module {module_name!r} of {spec!r} failed: {_where(error)}"
                         f"{type(error).__name__}: {error}") from None
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ValueError(
            f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute {attribute!r}; expected a "
            f"function returning a {what} or a list of them (the module defines {public})"
        ) from None
    if not callable(factory):
        raise TypeError(f"{spec} is a {type(factory).__name__}, not a function; "
                        f"expected a function returning a {what} or a list of them")
    try:
        made = factory()
    except (TypeError, ValueError) as error:
        raise type(error)(f"factory {spec} ran (its training, if any, is done) and then "
                          f"failed: {error}{_EARLIER if expected.__name__ == 'Subject' else ''}") from error
    except Exception as error:  # the user's own code failed: a usage error naming it, not a crash of the runner
        raise ValueError(f"factory {spec} ran and raised {type(error).__name__}: {error}") from error
    items = [made] if isinstance(made, expected) else made
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, expected) for item in items):
        got = (type(made).__name__ if not isinstance(made, (list, tuple))
               else f"a {type(made).__name__} holding {sorted({type(item).__name__ for item in made})}")
        raise TypeError(f"factory {spec} returned {got}; expected a {what} or a list of them")
    if not items:
        raise ValueError(f"factory {spec} returned an empty list; expected at least one {what}")
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise ValueError(f"factory {spec} returned {expected.__name__}s with the same "
                         f"name: {names}; names must differ (they name the rates)")
    return list(items)


def _where(error: BaseException) -> str:
    """``FILE, line N: `` of the innermost frame of ``error`` that lies outside Python's import machinery."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "importlib" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f"{frame.filename}, line {frame.lineno}: "
