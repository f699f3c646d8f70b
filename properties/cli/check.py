"""``dtd-properties check MODULE:FACTORY``: the property suite on a user's own model, from the shell.

A thin shell over pytest and the report plugin (one report format, one
baseline format, one gate): ``check`` runs ``pytest -m properties
--dtd-subject MODULE:FACTORY`` on the subjects alone -- none of the current
directory's tests -- and returns pytest's exit status (0: no rate
inconsistent with the baseline and none below a ``--require`` floor; 1: a
regression or a rate below a floor; 4: a usage error such as a factory that
cannot be imported, or a ``--require`` pattern that matches no rate).

``add_check_command(subparsers)`` adds the subcommand to the console
script's argparse parser; ``run_check(args)`` runs it.  ``python -m
properties.cli check ...`` works without the console script.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["add_check_command", "run_check", "pytest_arguments", "main", "seed_argument", "floor_argument",
           "add_require_argument", "REQUIRE_HELP"]

#: the largest seed (the plugin's --property-seed range)
SEED_MAXIMUM = 2**32 - 1


def seed_argument(text: str) -> int:
    """``--seed N``: an integer in ``[0, 2**32 - 1]`` (argparse then names ``--seed`` and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {text!r}") from None
    if not 0 <= value <= SEED_MAXIMUM:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32 - 1], got {value}")
    return value


def floor_argument(text: str) -> str:
    """``--require PATTERN>=VALUE``: checked by :func:`properties.measure.gates.parse_floor` (argparse then names
    ``--require`` and exits 2 with the accepted form)."""
    from properties.measure.gates import parse_floor

    try:
        parse_floor(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


#: the help of ``--require`` (``check`` and ``conform``)
REQUIRE_HELP = ("an absolute floor, repeatable: every rate whose name matches the glob PATTERN must have a rate "
                "(the point estimate) >= VALUE in [0, 1], e.g. 'conformance.mylib_*.equals_dtd.*>=0.99'; a rate "
                "below it fails the run, with or without a baseline; a PATTERN that matches no rate is a usage error")


def add_require_argument(parser: argparse.ArgumentParser) -> None:
    """``--require PATTERN>=VALUE`` (repeatable), passed on as pytest's ``--property-require``."""
    parser.add_argument("--require", action="append", type=floor_argument, default=None, metavar="PATTERN>=VALUE",
                        help=REQUIRE_HELP)


def require_options(args: argparse.Namespace) -> list[str]:
    """The pytest options of ``args.require``."""
    return [f"--property-require={text}" for text in getattr(args, "require", None) or ()]


def add_check_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``check`` to an ``argparse`` subparsers object; returns its parser."""
    parser = subparsers.add_parser(
        "check",
        help="judge DTD's promises on your own model and data (a Subject factory)",
        description="Evaluate the Subject(s) returned by MODULE:FACTORY (MODULE importable from the current "
                    "directory, as python -m would) and write the property report; gate on --baseline when it exists.",
    )
    parser.add_argument("factory", metavar="MODULE:FACTORY",
                        help="a function returning a properties.Subject or a list of them")
    parser.add_argument("--report", default="property-report", metavar="DIR",
                        help="report directory (default: property-report)")
    parser.add_argument(
        "--baseline", default=None, metavar="FILE",
        help=("your baseline (default: ./dtd-properties-baseline.json, and while that file is absent every rate is new "
              "and nothing fails; a FILE given here must exist, unless --update-baseline writes it)"),
    )
    parser.add_argument("--update-baseline", action="store_true",
                        help="write this run's rates into the baseline instead of gating on it")
    parser.add_argument("--confidence", type=float, default=None, metavar="C",
                        help="confidence of every interval (default: 0.99)")
    parser.add_argument("--seed", type=seed_argument, default=None, metavar="N",
                        help="seed of the neuron draws (default: 0)")
    parser.add_argument("--no-findings", action="store_true",
                        help="skip the insensitivity, invariance and randomisation rows (for large models)")
    add_require_argument(parser)
    parser.set_defaults(run=run_check)
    return parser


#: this console imported the plugin module before pytest could mark it for assertion rewriting; the warning pytest
#: prints about that (once per run, thrice for conform) is about this console, not about the user's code
QUIET_REWRITE = ("-W", "ignore::pytest.PytestAssertRewriteWarning")


def pytest_arguments(args: argparse.Namespace, collect_from: str) -> list[str]:
    """The pytest command line ``check`` runs (``collect_from``: a directory without tests)."""
    argv = [
        collect_from, "-p", "properties.plugin", "-p", "no:cacheprovider", "-m", "properties", "-q", *QUIET_REWRITE,
        "--rootdir", collect_from, "--dtd-subject", args.factory, "--property-report", str(Path(args.report).resolve()),
    ]
    if args.baseline is not None:
        argv += ["--property-baseline", str(Path(args.baseline).resolve())]
    if args.update_baseline:
        argv.append("--property-update-baseline")
    if args.confidence is not None:
        argv += ["--property-confidence", str(args.confidence)]
    if args.seed is not None:
        argv += ["--property-seed", str(args.seed)]
    if getattr(args, "no_findings", False):
        argv.append("--dtd-no-findings")
    return argv + require_options(args)


def run_check(args: argparse.Namespace) -> int:
    """Run ``check`` with parsed arguments; pytest's exit status."""
    import pytest

    # collect from an empty directory: only the subjects run, never the tests around the user's module;
    # the factory is still imported from the current directory (the plugin's --dtd-subject does that)
    with tempfile.TemporaryDirectory(prefix="dtd-properties-check-") as empty:
        return int(pytest.main(pytest_arguments(args, empty)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m properties.cli.check check ...`` (the console script wires :func:`add_check_command` itself)."""
    parser = argparse.ArgumentParser(prog="dtd-properties")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_check_command(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
