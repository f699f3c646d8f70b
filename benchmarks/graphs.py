"""``python -m benchmarks.graphs [--size 224] [--repeats 3] [--out DIR]``: DTD on real-size models, zennit beside it.

Models: torchvision's by name (``resnet18``, ``vgg16``), timm's as ``timm:NAME``
(``timm:resnet50``), segmentation_models_pytorch's as ``smp:ARCH`` (``smp:Unet``,
resnet18 encoder, 2 classes); ``NAME@SIZE`` sets one model's input side
(``smp:Unet@256``).  A classifier is explained at the first point's predicted
class; a segmentation model over a mask (class 1 on the image's centre half:
output weights, ``sum(w * y)``).

Each model runs in a fresh process (its peak RSS is its own, including the
~500 MiB of Python and torch).  Random weights with randomised batch-norm
statistics (no download), float32, 2 points.  Times are medians over
``--repeats`` calls after one warm-up call; the two sides of each ratio are
timed alternately in the same process, so load on the machine hits both.
Reported, per model:

* ``lower_s``: :meth:`dtd.ReLUNetwork.from_module` (once, cold);
* ``train_free_s``: z+ relevance of the explained output, every layer;
  ``zennit_s``: zennit's ``ZPlus(zero_params="bias")`` on Conv2d/Linear of the
  *original* model (with its ``ResNetCanonizer`` / ``VGGCanonizer`` merging
  batch norms, and ``Norm`` on the canonizer's residual sums), the same
  question; ``train_free_over_zennit``;
  ``relevance_difference``: ``max |R_dtd - R_zennit| / max |R_dtd|`` over the
  input (0 up to rounding where the two define the same relevance: VGG;
  a ResNet's residual sums and its average pooling are one DTD layer with the
  ``fc``, which zennit splits into steps, so there they differ);
* ``roots_s`` (``--roots``): every root question at every layer for ``K``
  sampled neurons per point (:func:`properties.measure.checks.root_outcomes`);
  ``floor_s``: the bare batched forward and backward of the same roots
  through what depends on each layer's input (autograd over the graph's own
  operators -- the model's convolutions with batch norms folded -- nothing
  else: no roots built, no inputs evaluated, no patterns compared);
  ``roots_over_floor``;
* ``peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results")


def _model(name: str):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name.startswith("timm:"):
            import timm

            model = timm.create_model(name[5:], pretrained=False)
        elif name.startswith("smp:"):
            import segmentation_models_pytorch as smp

            model = getattr(smp, name[4:])("resnet18", encoder_weights=None, classes=2)
        else:
            model = getattr(torchvision.models, name)()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _zennit_relevance(model, x, output) -> torch.Tensor:
    """zennit's z+ (``ZPlus(zero_params="bias")`` on every Conv2d and Linear, its canonizers merging batch norms,
    ``Norm`` on a torchvision ResNet's residual sums -- without it each sum hands both branches the whole relevance) of
    ``x``, of output ``output`` (an int) or of ``sum(output * y)`` (a weight tensor)."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, ZPlus
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    rule = ZPlus(zero_params="bias")
    layer_map = [(torch.nn.Conv2d, rule), (torch.nn.Linear, rule)]
    torchvision_resnet = type(model).__module__.startswith("torchvision") and hasattr(model, "layer1")
    # the canonizer's residual Sum shares relevance by its inputs' shares (Norm), as zennit's composites do
    if torchvision_resnet:
        canonizers, layer_map = [ResNetCanonizer()], [(Sum, Norm())] + layer_map
    elif type(model).__module__.startswith("torchvision"):
        canonizers = [VGGCanonizer()]
    else:  # timm and smp: every batch norm right after a convolution among a module's children (conv1, bn1; or 0, 1)
        canonizers = [SequentialMergeBatchNorm()]
    composite = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    xx = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xx)
        if isinstance(output, torch.Tensor):
            seed = out * output
        else:
            seed = torch.zeros_like(out)
            seed[:, output] = out[:, output]
        (relevance,) = torch.autograd.grad(out, xx, seed)
    return relevance


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _median(values):
    return sorted(values)[len(values) // 2]


def _floor_seconds(net, dec, roots_by_layer, points_by_layer, output) -> float:
    """Forward and backward of the same roots through the nodes that depend on each layer's input (plain autograd)."""
    from dtd.graph import AffineNode, ReLUNode

    base, _ = net.run(dec.x)
    start = time.perf_counter()
    for k, (roots, point) in enumerate(zip(roots_by_layer, points_by_layer, strict=True)):
        _, live = net.live_nodes(k)
        with torch.enable_grad():
            values = {}
            parts = [p.requires_grad_(True) for p in net.split_input(k, roots.clone())]
            for b, p in zip(net.layer(k).branches, parts, strict=True):
                values[b.source] = p
            for node in live:
                for s in net.sources(node):
                    if s not in values:
                        values[s] = base[s].index_select(0, point)
                if isinstance(node, AffineNode):
                    values[node.id] = sum(b.op.forward(values[b.source]) for b in node.branches) + node.bias
                elif isinstance(node, ReLUNode):
                    values[node.id] = torch.relu(values[node.source])
                else:
                    values[node.id] = node.pool(values[node.source])[0]
            out = values[net.layer_ids[-1]].flatten(1)[:, output]
            torch.autograd.grad(out.sum(), parts, allow_unused=True)
    return time.perf_counter() - start


def _roots_seconds(net, dec, neurons: int):
    """Every root question at every layer for ``neurons`` sampled neurons per
    point: (seconds, drawn neurons per layer)."""
    from properties.measure.checks import root_outcomes

    generator = torch.Generator().manual_seed(0)
    kept = []
    start = time.perf_counter()
    for k in range(net.n_layers):
        kept.append(root_outcomes(net, dec, layer=k, neurons=neurons, generator=generator).neurons)
    return time.perf_counter() - start, kept


def measure(name: str, size: int, roots: bool, neurons: int, repeats: int) -> dict:
    import dtd
    from benchmarks.workloads import peak_rss_mb
    from properties.measure.checks import selected_roots

    torch.set_grad_enabled(True)
    model = _model(name)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    lower, net = _timed(lambda: dtd.ReLUNetwork.from_module(model, (3, size, size)))
    lower_peak = peak_rss_mb()
    with torch.no_grad():
        y = model(x)
    if y.dim() == 2:
        output = int(y[0].argmax())
    else:  # a segmentation map: class 1 over the centre half of the image
        output = torch.zeros(y.shape[1:])
        h, w = y.shape[2:]
        output[1, h // 4 : h - h // 4, w // 4 : w - w // 4] = 1.0
    train_free, zennit = [], []
    for _ in range(repeats + 1):  # the first round warms both up and is not counted
        train_free.append(_timed(lambda: dtd.train_free(net, x, rule="z+", output=output))[0])
        zennit.append(_timed(lambda: _zennit_relevance(model, x, output))[0])
    dec = dtd.train_free(net, x, rule="z+", output=output)
    theirs = _zennit_relevance(model, x, output)
    ours = dec.relevance
    result = {"model": name, "input": [3, size, size], "points": 2, "layers": net.n_layers, "repeats": repeats,
              "lower_s": lower, "lower_peak_rss_mb": lower_peak,
              "explained": "predicted class" if isinstance(output, int) else "mask (class 1, centre half)",
              "train_free_s": _median(train_free[1:]), "zennit_s": _median(zennit[1:]),
              "relevance_difference": float((ours - theirs).abs().max() / ours.abs().max())}
    result["train_free_over_zennit"] = result["train_free_s"] / result["zennit_s"]
    result["train_free_peak_rss_mb"] = peak_rss_mb()
    if roots:
        seconds, floors = [], []
        for _ in range(repeats):  # root questions and their floor alternately
            t, kept = _roots_seconds(net, dec, neurons)
            seconds.append(t)
            roots_by_layer = [
                selected_roots(dec.layers[k].root_set, 0, 2, kept[k]).reshape(-1, net.in_features(k))
                for k in range(net.n_layers)
            ]
            points = [torch.arange(2).repeat_interleave(kept[k].shape[1]) for k in range(net.n_layers)]
            floors.append(_floor_seconds(net.explaining(output) if isinstance(output, torch.Tensor) else net, dec,
                                         roots_by_layer, points, 0 if isinstance(output, torch.Tensor) else output))
            del roots_by_layer
        result.update(roots_s=_median(seconds), floor_s=_median(floors), neurons=neurons,
                      roots_s_all=seconds, floor_s_all=floors)
        result["roots_over_floor"] = result["roots_s"] / result["floor_s"]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (graphs.json's)."""
    lines = ["| model | input | layers | lower (s) | z+ `train_free` (s) | zennit `ZPlus` (s) | ratio "
             "| relevance difference | root questions (s) | floor (s) | ratio | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        roots = (f"{r['roots_s']:.1f} | {r['floor_s']:.1f} | {r['roots_over_floor']:.2f}x" if "roots_s" in r
                 else "– | – | –")
        label = r["model"] + (" (a mask)" if "mask" in r.get("explained", "") else "")
        lines.append(
            f"| {label} | {'x'.join(map(str, r['input']))}, {r['points']} points | {r['layers']} | "
            f"{r['lower_s']:.1f} | "
            f"{r['train_free_s']:.2f} | {r['zennit_s']:.2f} | {r['train_free_over_zennit']:.2f}x | "
            f"{r['relevance_difference']:.1e} | {roots} | {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.graphs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--roots", nargs="*", default=["resnet18"], help="models whose root questions are timed")
    parser.add_argument("--neurons", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true",
                        help="update these models' rows of OUT/graphs.json (a row keeps "
                             "its root-question columns when they are not re-timed)")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        name, _, size = model.partition("@")
        spec = json.dumps({"name": name, "size": int(size) if size else args.size, "roots": model in args.roots,
                           "neurons": args.neurons, "repeats": args.repeats})
        done = subprocess.run([sys.executable, "-m", "benchmarks.graphs", "--one", spec], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from benchmarks.workloads import machine

    path = args.out / "graphs.json"
    if args.merge and path.exists():
        known = {r["model"]: r for r in json.loads(path.read_text())["rows"]}
        for r in rows:
            old = known.get(r["model"], {})
            kept = {key: value for key, value in old.items()
                    if key.startswith(("roots_", "floor_")) or key == "neurons"}
            if "roots_s" not in r and kept:
                r.update(kept, roots_run="earlier", peak_rss_mb=max(r["peak_rss_mb"], old["peak_rss_mb"]))
            known[r["model"]] = r
        rows = list(known.values())
    path.write_text(json.dumps({"machine": machine(), "size": args.size, "rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        spec = json.loads(sys.argv[2])
        print(json.dumps(measure(spec["name"], spec["size"], spec["roots"], spec["neurons"], spec.get("repeats", 3))))
    else:
        main()
