"""What the benchmarks time: the seed experiment (fast, per-point reference, floor) and scaling runs.

The seed experiment: train-free z+ roots of the first layer of
``ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)``, and the network output and
input gradient at every root (plus the other outcomes ``root_outcomes``
computes), for inputs drawn beforehand.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

import dtd
from properties.measure.checks import DEFAULT_MEMORY_BUDGET, root_outcomes

SEED_SIZES = [10, 10, 10, 10, 2]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def fast_experiment(net: dtd.ReLUNetwork, x: torch.Tensor, layers: Sequence[int] = (0,),
                    memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Batched: one train_free call, then every root of ``layers`` evaluated; returns the roots evaluated."""
    dec = dtd.train_free(net, x, rule="z+", output=0)
    n = 0
    for k in layers:
        outcomes = root_outcomes(net, dec, layer=k, memory_budget=memory_budget)
        n += outcomes.valid.numel()
    return n


def reference_experiment(net: dtd.ReLUNetwork, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """What the 2022 code did: one point at a time, one root at a time, autograd per root."""
    results = []
    for n in range(x.shape[0]):
        point = x[n : n + 1]
        dec = dtd.train_free(net, point, rule="z+", output=0)
        roots = dec.layers[0].roots[0]
        for j in range(roots.shape[0]):
            root = roots[j : j + 1].clone().requires_grad_(True)
            value = net(root)[0, 0]
            (grad,) = torch.autograd.grad(value, root)
            results.append((float(value.detach()), grad))
    return results


def floor_experiment(net: dtd.ReLUNetwork, roots: torch.Tensor) -> None:
    """The least any implementation must do: one batched forward and backward of all roots."""
    leaf = roots.detach().requires_grad_(True)
    value = net(leaf)[:, 0]
    torch.autograd.grad(value.sum(), leaf)


def region_lp_reference(a, A_region, c_region, sign, eq_lhs, eq_rhs, norm, nonnegative):
    """The per-LP reference of RegionLP: the same program for scipy.optimize.linprog, from scratch: (status, r)."""
    from scipy.optimize import linprog

    d = a.shape[0]
    keep = sign != 0
    region = -(sign[keep, None] * A_region[keep])
    eye = np.eye(d)
    extra = d if norm == "l1" else 1
    distance = -eye if norm == "l1" else -np.ones((d, 1))
    a_ub = np.vstack([np.hstack([region, np.zeros((region.shape[0], extra))]), np.hstack([eye, distance]),
                      np.hstack([-eye, distance])])
    b_ub = np.concatenate([sign[keep] * c_region[keep], a, -a])
    cost = np.concatenate([np.zeros(d), np.ones(extra)])
    a_eq = np.concatenate([eq_lhs, np.zeros(extra)])[None]
    bounds = [(0.0 if nonnegative else None, None)] * d + [(0.0, None)] * extra
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[eq_rhs], bounds=bounds, method="highs")
    if result.status == 0:
        return 0, result.x[:d]
    return (2 if result.status == 2 else 3), None


def region_sampling_reference(finder, net, k, a, relevance):
    """RegionSamplingRoots one point, one ray, one constraint, one neuron at a time: (roots, valid)."""
    from dtd.regions import region_constraints, region_slack

    region = region_constraints(net, a, k, 0)
    directions = finder.directions(a.shape[0], a.shape[1], k)
    slack = region_slack(a.dtype)
    w = net.weight(k).to(torch.float64)
    a = a.to(torch.float64)
    roots = a.unsqueeze(1).repeat(1, w.shape[0], 1).clone()
    valid = torch.ones(a.shape[0], w.shape[0], dtype=torch.bool)
    for n in range(a.shape[0]):
        edges = []
        for kk in range(finder.n_directions):
            d = directions[n, kk].clone()
            for i in range(a.shape[1]):
                if a[n, i] <= 0:
                    d[i] = abs(d[i])
            edge = math.inf
            for m in range(region.A.shape[1]):
                g = float(region.sign[n, m] * (region.A[n, m] @ a[n] + region.c[n, m]))
                h = float(region.sign[n, m] * (region.A[n, m] @ d))
                if h < 0:
                    edge = min(edge, (g + slack) / -h)
            for i in range(a.shape[1]):
                if d[i] < 0:
                    edge = min(edge, float(a[n, i] / -d[i]))
            edges.append((d, edge))
        for j in range(w.shape[0]):
            if relevance[n, j] == 0:
                continue
            best = None
            for d, edge in edges:
                wd = float(w[j] @ d)
                if wd == 0:
                    continue
                s = -float(relevance[n, j]) / wd
                if 0 <= s <= edge and (best is None or s < best[0]):
                    best = (s, d)
            if best is None:
                valid[n, j] = False
            else:
                roots[n, j] = a[n] + best[0] * best[1]
    return roots, valid


def region_sampling_rates(net: dtd.ReLUNetwork, x: torch.Tensor, reference_points: int,
                          n_directions: int = 256) -> dict:
    """Points per second: RegionSamplingRoots on the first layer versus its per-point loop."""
    dec = dtd.train_free(net, x)
    lay = dec.layers[0]
    finder = dtd.RegionSamplingRoots(n_directions)
    fast = median_seconds(lambda: finder.find(net, 0, lay.input, lay.upper_relevance, output=0), 3)
    a, relevance = lay.input[:reference_points].double(), lay.upper_relevance[:reference_points].double()
    start = time.perf_counter()
    region_sampling_reference(finder, net, 0, a, relevance)
    reference = time.perf_counter() - start
    return {"points": x.shape[0], "n_directions": n_directions, "seconds": fast, "points_per_s": x.shape[0] / fast,
            "reference_points": reference_points, "reference_points_per_s": reference_points / reference,
            "speedup": (x.shape[0] / fast) / (reference_points / reference)}


def region_roots_lp_rates(net: dtd.ReLUNetwork, x: torch.Tensor, reference_points: int) -> dict:
    """LPs per second: RegionRoots on the first layer of ``x`` versus one linprog call per LP."""
    from dtd.regions import region_constraints

    dec = dtd.train_free(net, x.double() if net.dtype == torch.float64 else x)
    lay = dec.layers[0]
    start = time.perf_counter()
    found = dtd.RegionRoots("l1").find(net, 0, lay.input, lay.upper_relevance, output=0)
    fast = time.perf_counter() - start
    counts = found.counts()
    n_lp = counts["solved"] + counts["infeasible"] + counts["solver failed"]
    a = lay.input[:reference_points].to(torch.float64)
    region = region_constraints(net, a, 0, 0)
    weight = net.weight(0).to(torch.float64).numpy()
    relevance = lay.upper_relevance[:reference_points].to(torch.float64).numpy()
    start, n_ref = time.perf_counter(), 0
    for n in range(a.shape[0]):
        for j in np.nonzero(relevance[n])[0]:
            region_lp_reference(a[n].numpy(), region.A[n].numpy(), region.c[n].numpy(), region.sign[n].numpy(),
                                weight[j], float(weight[j] @ a[n].numpy() - relevance[n, j]), "l1", True)
            n_ref += 1
    reference = time.perf_counter() - start
    return {"lps": n_lp, "seconds": fast, "lps_per_s": n_lp / fast, "counts": counts,
            "reference_lps": n_ref, "reference_lps_per_s": n_ref / reference,
            "speedup": (n_lp / fast) / (n_ref / reference)}


def machine() -> str:
    """The machine a result was measured on, for the results files and the figures."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling_point(spec: dict) -> dict:
    """One scaling measurement, meant to run in a fresh process so its peak RSS is its own."""
    for seed in range(spec.get("seed", 0), spec.get("seed", 0) + 100):  # the first seed whose output 0 is alive
        net = dtd.ReLUNetwork.random(spec["sizes"], seed=seed, init=spec.get("init", "torch"))
        start = time.perf_counter()
        try:
            x = net.sample_inputs(spec["n"], output=0, min_output=spec.get("min_output", 0.0), seed=0)
        except ValueError:
            continue
        sampling = time.perf_counter() - start
        break
    else:
        raise ValueError(f"no seed gives a live output 0 for {spec}")
    spec = {**spec, "seed": seed}
    layers = range(net.n_layers) if spec.get("all_layers") else (0,)
    start = time.perf_counter()
    n_roots = fast_experiment(net, x, layers)
    seconds = time.perf_counter() - start
    return {**spec, "seconds": seconds, "sampling_seconds": sampling, "points_per_s": spec["n"] / seconds,
            "roots": n_roots, "roots_per_s": n_roots / seconds, "peak_rss_mb": peak_rss_mb()}


if __name__ == "__main__":  # python -m benchmarks.workloads '<json spec>'
    torch.set_grad_enabled(False)
    print(json.dumps(scaling_point(json.loads(sys.argv[1]))))
