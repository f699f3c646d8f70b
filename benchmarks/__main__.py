"""``python -m benchmarks [--quick] [--out DIR]``: print the tables, write results.json and scaling.png.

Every ratio compares measurements taken in the same run on the same machine;
times are medians over repeats.  Scaling points run in fresh processes so each
peak RSS (which includes the ~300 MiB of Python and torch) is that run's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import dtd
from benchmarks.graphs import table
from benchmarks.workloads import (
    SEED_SIZES,
    fast_experiment,
    floor_experiment,
    machine,
    median_seconds,
    reference_experiment,
    region_roots_lp_rates,
    region_sampling_rates,
)

RESULTS = Path(__file__).with_name("results")


def seed_experiment(repeats: int, reference_points: int) -> dict:
    net = dtd.ReLUNetwork.random(SEED_SIZES, seed=2)
    sampling = median_seconds(lambda: net.sample_inputs(1000, output=0, min_output=0.1, seed=0), repeats)
    x = net.sample_inputs(1000, output=0, min_output=0.1, seed=0)
    train_free = median_seconds(lambda: dtd.train_free(net, x, rule="z+", output=0), repeats)
    fast = median_seconds(lambda: fast_experiment(net, x), repeats)
    roots = dtd.train_free(net, x).layers[0].roots.reshape(-1, SEED_SIZES[0]).clone()
    floor = median_seconds(lambda: floor_experiment(net, roots), repeats)
    subset = x[:reference_points]
    reference = median_seconds(lambda: reference_experiment(net, subset), 3) / reference_points * 1000
    return {
        "points": 1000,
        "sampling_s": sampling,
        "train_free_s": train_free,
        "fast_s": fast,
        "fast_points_per_s": 1000 / fast,
        "floor_s": floor,
        "fast_over_floor": fast / floor,
        "reference_s_per_1000_points": reference,
        "reference_points_timed": reference_points,
        "reference_points_per_s": 1000 / reference,
        "speedup_over_reference": reference / fast,
    }


def _run_point(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.workloads", json.dumps(spec)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(quick: bool) -> list[dict]:
    specs = []
    for n in ([1000, 10_000, 100_000] if quick else [1000, 10_000, 100_000, 1_000_000]):
        specs.append({"axis": "N", "value": n, "sizes": SEED_SIZES, "seed": 2, "init": "dtd", "min_output": 0.1,
                      "n": n})
    for width in [10, 64, 128, 256, 512]:
        specs.append({"axis": "width", "value": width, "sizes": [10, width, width, width, 2],
                      "n": 500 if quick else 2000})
    for depth in [2, 4, 6, 8]:
        specs.append({"axis": "depth", "value": depth, "sizes": [10] + [10] * (depth - 1) + [2],
                      "n": 10_000 if quick else 100_000})
    for size in [10, 100, 784]:
        specs.append({"axis": "input size", "value": size, "sizes": [size, 10, 10, 10, 2],
                      "n": 10_000 if quick else 100_000})
    specs.append({"axis": "784-512-512-10, all layers", "value": 0, "sizes": [784, 512, 512, 10], "all_layers": True,
                  "n": 1000 if quick else 10_000})
    results = []
    for spec in specs:
        result = _run_point(spec)
        results.append(result)
        print(f"  {spec['axis']:>28} {spec['value']:>8}  N={spec['n']:>8}  {result['points_per_s']:>12,.0f} points/s "
              f" {result['roots_per_s']:>12,.0f} roots/s  {result['seconds']:>7.2f} s  peak RSS "
              f"{result['peak_rss_mb']:>7.0f} MiB", flush=True)
    return results


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    axes_names = ["N", "width", "depth", "input size"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), dpi=100)
    for ax, name in zip(axes, axes_names, strict=True):
        rows = [r for r in results if r["axis"] == name]
        xs = [r["value"] for r in rows]
        ax.plot(xs, [r["points_per_s"] for r in rows], "o-", color="tab:blue", label="points/s")
        ax.set_xlabel(name)
        ax.set_ylabel("points per second", color="tab:blue")
        ax.set_yscale("log")
        if name in ("N", "width", "input size"):
            ax.set_xscale("log")
        twin = ax.twinx()
        twin.plot(xs, [r["peak_rss_mb"] for r in rows], "s--", color="tab:red", label="peak RSS")
        twin.set_ylabel("peak RSS (MiB)", color="tab:red")
        twin.set_ylim(bottom=0)
        ax.set_title(f"seed experiment vs {name}")
    fig.suptitle(f"train_free + root_outcomes of the first layer's roots ({machine()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: the documentation page whose tables ``--docs`` rewrites (between the markers below)
PERFORMANCE_PAGE = Path(__file__).resolve().parent.parent / "docs" / "explanation" / "performance.md"
_BEGIN, _END = "<!-- benchmark-table -->", "<!-- /benchmark-table -->"


def markdown(results: dict, directory: Path = RESULTS) -> str:
    """The performance page's tables, from a results.json."""
    s = results["seed_experiment"]
    lines = [
        f"Measured on {results['machine']} (this project's CI machine; "
        "shared and noisy, so read ratios rather than absolute times).",
        "",
        "Seed experiment (1000 points, train-free z+ roots of the first layer, "
        "output, gradient and the other outcomes at every root; sampling excluded):",
        "",
        "| what | median | points/s | ratio |",
        "|---|---|---|---|",
        f"| sampling 1000 inputs (excluded) | {s['sampling_s'] * 1e3:.2f} ms | | |",
        f"| `train_free` alone, all 4 layers | {s['train_free_s'] * 1e3:.2f} ms | | |",
        "| fast: `train_free` + `root_outcomes(layer=0)` "
        f"| {s['fast_s'] * 1e3:.2f} ms | {s['fast_points_per_s']:,.0f} | |",
        "| floor: bare batched forward + backward of the 10,000 roots "
        f"| {s['floor_s'] * 1e3:.2f} ms | | fast / floor = {s['fast_over_floor']:.2f} |",
        f"| per-point reference (one point, one root, autograd per root; {s['reference_points_timed']} points "
        f"timed) | {s['reference_s_per_1000_points']:.2f} s per 1000 points "
        f"| {s['reference_points_per_s']:,.0f} | fast is {s['speedup_over_reference']:,.0f}x faster |",
        "",
        "Scaling (`train_free` + `root_outcomes` of the first layer's "
        "roots; the last row evaluates every root of every layer):",
        "",
        "| axis | value | sizes | N | points/s | roots/s | seconds | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["scaling"]:
        lines.append(
            f"| {r['axis']} | {r['value'] or ''} | {'-'.join(map(str, r['sizes']))} | {r['n']:,} | "
            f"{r['points_per_s']:,.0f} | {r['roots_per_s']:,.0f} | {r['seconds']:.2f} | {r['peak_rss_mb']:,.0f} MiB |"
        )
    lines += real_size_lines(directory)
    lp = results.get("region_roots")
    if lp:
        lines += [
            "",
            f"Root finders, seed network, 1000 points, layer 0: `RegionRoots` solved {lp['lps']:,} LPs at "
            f"{lp['lps_per_s']:,.0f} LPs/s; one `scipy.optimize.linprog` call per LP (its reference) runs at "
            f"{lp['reference_lps_per_s']:,.0f} LPs/s (ratio {lp['speedup']:.1f}). Statuses: {lp['counts']}.",
        ]
    rs = results.get("region_sampling")
    if rs:
        lines += [
            "",
            f"`RegionSamplingRoots` ({rs['n_directions']} rays per point), same points: "
            f"{rs['points_per_s']:,.0f} points/s; its per-point loop (one ray, constraint and neuron at a time) "
            f"{rs['reference_points_per_s']:,.2f} points/s (ratio {rs['speedup']:,.0f}).",
        ]
    return "\n".join(lines)


def real_size_lines(directory: Path = RESULTS) -> list[str]:
    """The real-size tables (``graphs.json`` of :mod:`benchmarks.graphs`,
    ``subjects.json`` of :mod:`benchmarks.subjects`)."""
    lines = []
    graphs = directory / "graphs.json"
    if graphs.exists():
        data = json.loads(graphs.read_text())
        rows = data["rows"]
        repeats = rows[0].get("repeats", 1) if rows else 1
        neurons = next((r["neurons"] for r in rows if "neurons" in r), None)
        lines += [
            "",
            f"Real-size models (`python -m benchmarks.graphs --size {data['size']} --repeats "
            f"{repeats}`; {data.get('machine', 'this machine')}; each model in a fresh process, "
            f"medians of {repeats} after a warm-up, both sides of a ratio timed alternately"
            + (f"; root questions: every question at every layer, {neurons} sampled neurons per point" if neurons
               else "") + "):",
            "",
            table(rows),
        ]
    subjects = directory / "subjects.json"
    if subjects.exists():
        rows = json.loads(subjects.read_text())["rows"]
        lines += ["",
                  "`dtd-properties check` on benchmark subjects (`python -m benchmarks.subjects "
                  "NAME`, one fresh process each; the time includes start-up and imports):", "",
                  "| factory | seconds | peak RSS (MiB) | exit status |", "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `benchmarks.subject_factories:{r['factory']}` "
                         f"| {r['seconds']:.1f} | {r['peak_rss_mib']:,} | {r['status']} |")
    return lines


def update_page(results: dict, page: Path = PERFORMANCE_PAGE) -> None:
    """Replace the performance page's benchmark section (between its markers) with :func:`markdown`."""
    text = page.read_text()
    start, end = text.index(_BEGIN) + len(_BEGIN), text.index(_END)
    page.write_text(text[:start] + "\n" + markdown(results) + "\n" + text[end:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller N everywhere (about a minute)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results.json and scaling.png go")
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="only rewrite the tables of docs/explanation/performance.md from OUT/results.json")
    parser.add_argument("--tables", action="store_true",
                        help="only print the tables of OUT (results, graphs and subjects JSON)")
    parser.add_argument("--seed-only", action="store_true",
                        help="re-measure only the seed experiment into OUT/results.json")
    args = parser.parse_args(argv)
    if args.docs:
        update_page(json.loads((args.out / "results.json").read_text()))
        print(f"{PERFORMANCE_PAGE} tables rewritten from {args.out / 'results.json'}")
        return
    if args.tables:
        print(markdown(json.loads((args.out / "results.json").read_text()), args.out))
        return
    if args.seed_only:  # re-measure the seed experiment; every other section stays as the last full run wrote it
        path = args.out / "results.json"
        results = json.loads(path.read_text())
        torch.set_grad_enabled(True)
        results["seed_experiment"] = seed_experiment(repeats=31, reference_points=100)
        results["seed_machine"] = machine()
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(markdown(results, args.out))
        return
    torch.set_grad_enabled(True)
    print(f"machine: {machine()}")

    print("\nseed experiment: 1000 points, train-free z+ roots of layer 0, output and gradient at every root")
    seed = seed_experiment(repeats=11 if args.quick else 31, reference_points=20 if args.quick else 100)
    print(f"  sampling (excluded below)      {seed['sampling_s'] * 1e3:9.2f} ms")
    print(f"  train_free alone (all layers)  {seed['train_free_s'] * 1e3:9.2f} ms")
    print(f"  fast: train_free + checks      {seed['fast_s'] * 1e3:9.2f} ms "
          f"  {seed['fast_points_per_s']:>12,.0f} points/s")
    print(f"  floor: bare forward+backward   {seed['floor_s'] * 1e3:9.2f} ms "
          f"  fast / floor = {seed['fast_over_floor']:.2f}")
    print(f"  per-point reference ({seed['reference_points_timed']} points) "
          f"{seed['reference_s_per_1000_points']:9.2f} s per 1000 points "
          f"  {seed['reference_points_per_s']:>8,.1f} points/s   fast is {seed['speedup_over_reference']:,.0f}x faster")

    print("\nscaling (each in a fresh process):")
    points = scaling(args.quick)
    print("\nroot finders: RegionRoots (one LP per (point, neuron) "
          "carrying relevance), seed network, 1000 points, layer 0")
    net = dtd.ReLUNetwork.random(SEED_SIZES, seed=2)
    lp = region_roots_lp_rates(net, net.sample_inputs(1000, output=0, min_output=0.1, seed=0),
                               20 if args.quick else 100)
    print(f"  RegionRoots: {lp['lps']} LPs in {lp['seconds']:.2f} s = {lp['lps_per_s']:,.0f} LPs/s; per-LP linprog "
          f"reference {lp['reference_lps_per_s']:,.0f} LPs/s; ratio {lp['speedup']:.1f}; statuses {lp['counts']}")
    rs = region_sampling_rates(net, net.sample_inputs(1000, output=0, min_output=0.1, seed=0), 2 if args.quick else 5)
    print(f"  RegionSamplingRoots (256 rays per point): {rs['points_per_s']:,.0f} points/s; per-point loop "
          f"{rs['reference_points_per_s']:,.2f} points/s; ratio {rs['speedup']:,.0f}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "quick": args.quick,
                "seed_experiment": seed,
                "scaling": points,
                "region_roots": lp,
                "region_sampling": rs,
            },
            indent=2,
        )
        + "\n"
    )
    plot(points, args.out / "scaling.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'scaling.png'}")
    print("\n".join(real_size_lines(args.out)))


if __name__ == "__main__":
    main()
