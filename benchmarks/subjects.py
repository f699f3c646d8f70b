"""``python -m benchmarks.subjects``: wall time and peak RSS of ``dtd-properties check`` on benchmark subjects.

Each factory of :mod:`benchmarks.subject_factories` runs in a fresh process
(``python -m properties.subject_cli check``); the time includes Python
start-up, imports and training.  The peak RSS is the largest of the
children so far: give one factory per invocation for its own
(``python -m benchmarks.subjects wide_cnn``).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

FACTORIES = ("digits_mlp", "digits_cnn", "wide_cnn")


def run(factory: str) -> dict:
    with tempfile.TemporaryDirectory() as report:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "properties.subject_cli", "check", f"benchmarks.subject_factories:{factory}", "--report", report],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"factory": factory, "status": done.returncode, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak / 1024), "last_line": tail[0]}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or FACTORIES
    for name in names:
        print(run(name), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
