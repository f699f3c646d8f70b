"""``python -m benchmarks.subjects``: wall time and peak RSS of ``dtd-properties check`` on benchmark subjects.

Each factory of :mod:`benchmarks.subject_factories` runs in a fresh process
(``python -m properties.cli check``); the time includes Python
start-up, imports and training.  The peak RSS is the largest of the
children so far: give one factory per invocation for its own
(``python -m benchmarks.subjects wide_cnn``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results")
FACTORIES = ("digits_mlp", "digits_cnn", "wide_cnn", "resnet18_224")


def run(factory: str) -> dict:
    with tempfile.TemporaryDirectory() as report:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "properties.cli", "check", f"benchmarks.subject_factories:{factory}", "--report",
             report],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"factory": factory, "status": done.returncode, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak / 1024), "last_line": tail[0]}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or FACTORIES
    rows = []
    for name in names:
        rows.append(run(name))
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "subjects.json"
    known = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = {r["factory"]: r for r in known}
    merged.update({r["factory"]: r for r in rows})
    path.write_text(json.dumps({"rows": list(merged.values())}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
