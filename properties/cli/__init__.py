"""The ``dtd-properties`` console script: a thin shell over pytest and the property plugin.

Subcommands
-----------
``dtd-properties check MODULE:FACTORY [OPTIONS]``
    The property suite on a user's own model and data (:class:`properties.Subject`,
    :mod:`properties.cli.check`): pytest with ``--dtd-subject``.  Options: ``[--report DIR] [--baseline FILE]
    [--update-baseline] [--confidence C] [--seed N] [--no-findings] [--require PATTERN>=VALUE ...]``.
``dtd-properties conform MODULE:FACTORY [MODULE:FACTORY ...] [OPTIONS]``
    Run the conformance kit (:mod:`properties.conformance`) on the LRP
    implementations the factories return: pytest on the kit's test module
    with ``--dtd-implementation``.  One report format, one baseline format,
    one gate: the same plugin as ``pytest -m properties``.  Options: ``[--report DIR] [--baseline FILE]
    [--update-baseline] [--confidence C] [--seed N] [--call-timeout S] [--require PATTERN>=VALUE ...]``.

``dtd-properties --version`` prints the installed version.

Gates: a rate inconsistent with the baseline; with or without a baseline, a
conformance property every implementation must satisfy
(:data:`properties.measure.gates.MUST_HOLD`) below 100 %; and a rate below a floor
``--require 'PATTERN>=VALUE'`` (repeatable; :mod:`properties.measure.gates`).

Exit codes: pytest's (0 all passed, 1 a rate regressed against the
baseline or fell below a floor, 3 the report or the baseline could not be written: the message
names the path and the error), 2 for usage errors (a bad factory, a module
that does not import, a bad option value included, a ``--require`` pattern
that matches no rate of the run).  Each
subcommand is a function ``_<name>(args) -> int`` registered in
:func:`parser`, so adding one is a small change.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .check import QUIET_REWRITE, add_check_command, add_require_argument, require_options, seed_argument

__all__ = ["main", "parser", "version"]

#: the default of --call-timeout (``properties.conformance.DEFAULT_CALL_TIMEOUT``; not imported
#: here: that imports torch)
DEFAULT_CALL_TIMEOUT = 120.0
#: exit code of usage errors (argparse's own)
USAGE = 2
#: pytest's exit code of usage errors (``pytest.ExitCode.USAGE_ERROR``)
PYTEST_USAGE = 4


def parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    top = argparse.ArgumentParser(prog="dtd-properties",
                                  description="DTD property suite: report, gate, conformance kit")
    top.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conform = commands.add_parser(
        "conform", help="test LRP implementations against DTD's properties (the conformance kit)",
        description="Run the conformance kit on the implementations returned by MODULE:FACTORY (MODULE importable "
                    "from the current directory; FACTORY returns a properties.Implementation or a list of them).")
    conform.add_argument("implementations", nargs="+", metavar="MODULE:FACTORY")
    _common(conform, "conformance-baseline.json")
    conform.add_argument("--call-timeout", type=_seconds, default=None, metavar="S",
                         help="the longest one call of an implementation may take, in seconds (default: "
                              f"{DEFAULT_CALL_TIMEOUT:g}); a slower call fails the property it was made for")
    add_require_argument(conform)
    conform.set_defaults(run=_conform)
    add_check_command(commands)
    return top


def version() -> str:
    """The installed distribution's version (``"unknown"`` when running from a tree that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("dtd-properties")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _common(sub: argparse.ArgumentParser, baseline: str) -> None:
    sub.add_argument("--report", default="property-report", metavar="DIR",
                     help="report directory (default: property-report)")
    sub.add_argument("--baseline", default=None, metavar="FILE",
                     help=f"your baseline to gate on (default: ./{baseline}, where an absent file means every rate is "
                          "new; a FILE named here must exist unless --update-baseline creates it)")
    sub.add_argument("--update-baseline", action="store_true",
                     help="write this run's rates to the baseline instead of gating")
    sub.add_argument("--confidence", type=float, default=None, metavar="C",
                     help="confidence of every interval (default: 0.99)")
    sub.add_argument("--seed", type=seed_argument, default=0, metavar="N",
                     help="seed of the generated networks, in [0, 2**32 - 1] (default 0: reproducible)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _conform(args: argparse.Namespace) -> int:
    from properties import conformance

    for spec in args.implementations:
        try:
            conformance.load_implementations(spec)
        except (TypeError, ValueError) as error:
            print(f"dtd-properties conform: {error}", file=sys.stderr)
            return USAGE
    suite = Path(conformance.__file__).with_name("pytest_module.py")
    options = [f"--dtd-implementation={spec}" for spec in args.implementations]
    if args.call_timeout is not None:
        options.append(f"--property-call-timeout={args.call_timeout}")
    options += require_options(args)
    code = _pytest([str(suite), *options], args)
    # pytest's usage error (4: a report or baseline path that cannot be used, ...) is this command's usage error
    return USAGE if code == PYTEST_USAGE else code


def _pytest(targets: list[str], args: argparse.Namespace) -> int:
    import pytest

    argv = [
        *targets,
        "-p", "properties.plugin",
        "-p", "no:cacheprovider",
        "--noconftest",  # only the kit runs: neither the user's conftest files nor a source checkout's apply
        *QUIET_REWRITE,
        "--rootdir", os.getcwd(),
        "--property-report", args.report,
        *(["--property-baseline", args.baseline] if args.baseline is not None else []),
        "--property-seed", str(args.seed),
        *(["--property-confidence", str(args.confidence)] if args.confidence is not None else []),
        "-q",
        *(["--property-update-baseline"] if args.update_baseline else []),
    ]
    return int(pytest.main(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dtd-properties``; returns the exit code."""
    args = parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # MODULE importable from the current directory, as `python -m` does
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
