"""Regenerate the figures and rendered reports the documentation shows (``docs/assets/``).

Run from anywhere, in an environment with the package and its test extra installed::

    python docs/tools/figures.py [--skip-suite] [--skip-tutorial]

1. ``HYPOTHESIS_PROFILE=ci pytest -m properties`` into a temporary report directory; the figures listed in
   :data:`SUITE_FIGURES` are copied to ``docs/assets/figures/`` and the top of its ``report.html`` is screenshot
   to ``docs/assets/report/suite-report.png``.
2. The first tutorial's factory (the ``# file: my_model.py`` block of ``docs/tutorials/check-your-model.md``) is
   run with ``dtd-properties check`` in a temporary directory; its ``report.html`` is copied to
   ``docs/assets/report/tutorial-report.html`` and screenshot to ``tutorial-report.png``.
3. ``benchmarks/results/scaling.png`` (written by ``python -m benchmarks``) is copied to ``docs/assets/figures/``.

Screenshots need headless Chromium (Debian: ``apt-get install chromium``); without it they are skipped, with a
message. Under the ``ci`` profile the numbers repeat exactly and the report's PNGs are byte-identical for identical
data, so a rerun changes a file only when a result changed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "docs" / "assets"
FIGURES = ASSETS / "figures"
REPORTS = ASSETS / "report"
TUTORIAL = ROOT / "docs" / "tutorials" / "check-your-model.md"

#: the suite's figures the pages show
SUITE_FIGURES = (
    "notebook_output_difference.png",
    "notebook_gradient_difference.png",
    "rules_comparison.png",
    "layers_by_rule_gradient_match.png",
    "insensitivity_by_depth.png",
    "invariance_by_rule.png",
    "randomisation_digits_cnn.png",
)
#: the browser window of the screenshots (CSS pixels)
WINDOW = "1280,1000"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, png: Path) -> bool:
    """The top of ``html`` as a PNG (headless Chromium, no network); False when no Chromium is installed."""
    browser = _chromium()
    if browser is None:
        print(f"figures: no chromium found; {png.name} not regenerated", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--window-size={WINDOW}", f"--screenshot={png}",
                   html.resolve().as_uri()]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return True


def suite(work: Path) -> None:
    report = work / "suite-report"
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci")
    code = subprocess.call([sys.executable, "-m", "pytest", "-m", "properties", "-q", "-p", "no:cacheprovider",
                            "--property-report", str(report)], cwd=ROOT, env=env)
    if code != 0:
        raise SystemExit(f"figures: pytest -m properties exited {code}; figures not copied")
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name in SUITE_FIGURES:
        shutil.copyfile(report / name, FIGURES / name)
    REPORTS.mkdir(parents=True, exist_ok=True)
    screenshot(report / "report.html", REPORTS / "suite-report.png")


def tutorial_factory() -> str:
    """The ``# file: my_model.py`` block of the first tutorial, as the reader saves it."""
    text = TUTORIAL.read_text()
    found = re.search(r"```python\n(# file: my_model\.py\n.*?)```", text, re.S)
    if not found:
        raise SystemExit(f"figures: no '# file: my_model.py' block in {TUTORIAL}")
    return found.group(1)


def tutorial(work: Path) -> None:
    directory = work / "tutorial"
    directory.mkdir()
    (directory / "my_model.py").write_text(tutorial_factory())
    code = subprocess.call([sys.executable, "-m", "properties.cli", "check", "my_model:subjects"], cwd=directory)
    if code != 0:
        raise SystemExit(f"figures: dtd-properties check exited {code}")
    REPORTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(directory / "property-report" / "report.html", REPORTS / "tutorial-report.html")
    screenshot(REPORTS / "tutorial-report.html", REPORTS / "tutorial-report.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-suite", action="store_true", help="leave the suite's figures as they are")
    parser.add_argument("--skip-tutorial", action="store_true", help="leave the tutorial's report as it is")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dtd-docs-figures-") as work:
        if not args.skip_suite:
            suite(Path(work))
        if not args.skip_tutorial:
            tutorial(Path(work))
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "benchmarks" / "results" / "scaling.png", FIGURES / "scaling.png")
    print(f"figures: written under {ASSETS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
