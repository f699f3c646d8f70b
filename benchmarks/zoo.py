"""``python -m benchmarks.zoo``: the lowering on the zoos (options ``--size 64``, ``--only SUBSTRING ...``,
``--timeout 600``, ``--out DIR``).

What users download: one small variant of every architecture family of timm
(each module of ``timm.list_modules()``: the candidate with the fewest
parameters among its smallest-sounding names, counted on the meta device),
one variant of every torchvision classification family and every torchvision
segmentation model, ``segmentation_models_pytorch``'s Unet, FPN and Linknet
(resnet18 encoder), and a few Hugging Face vision models in small
configurations.  Random weights (nothing is downloaded), batch-norm
statistics randomised, float64, at ``3 x SIZE x SIZE`` (a model that does not
run there is retried at its own default input size).  Each model runs in a
fresh process with a time limit.

One row per model, its ``status``:

* ``lowered`` -- ``dtd.ReLUNetwork.from_module`` returned, and ``difference``
  is the largest ``|lowered(x) - model(x)|`` relative to the largest output on
  two random inputs (the lowering checks this itself too);
* ``refused: not piecewise linear`` -- a ``TypeError`` naming the operation
  (``reason``: ``silu``, ``layer_norm``, ``softmax``, a product of
  activations, ...) and its module;
* ``refused: no exact form within the limits`` -- piecewise linear,
  but an affine map whose modified weights have no matrix-free form and whose
  dense matrix exceeds ``memory_budget`` (the default 1 GiB) or would take more
  than ``dtd.lowering.DENSE_WORK_LIMIT`` multiply-adds to compute;
* ``refused: cannot be captured`` -- ``torch.export`` cannot capture the model;
* ``failed`` -- anything else (an error of the lowering, a time-out): the
  list that must stay empty.

The coverage line: lowered / (lowered + piecewise linear but refused), and
refused-not-piecewise-linear / all refused by an operation.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results")

#: name fragments of a family's small variants, most preferred first
_SMALL = ("atto", "femto", "pico", "nano", "xxs", "tiny", "xs", "mini", "small", "lite", "050", "b0", "18", "_s", "t",
          "s")


def _timm_candidates(module: str) -> list[str]:
    import timm

    names = timm.list_models(module=module)

    def score(name):
        for rank, token in enumerate(_SMALL):
            if token in name:
                return (rank, len(name), name)
        return (len(_SMALL), len(name), name)

    return sorted(names, key=score)


def _count_parameters(make) -> int:
    with torch.device("meta"):
        model = make()
    return sum(p.numel() for p in model.parameters())


def timm_models(max_candidates: int = 6) -> list[dict]:
    """One entry per timm module: its candidate with the fewest parameters (among the smallest-sounding names)."""
    import timm

    entries = []
    for module in timm.list_modules():
        best = None
        for name in _timm_candidates(module)[:max_candidates]:
            try:
                n = _count_parameters(lambda name=name: timm.create_model(name, pretrained=False))
            except Exception:  # noqa: BLE001  (a candidate that cannot be built on the meta device is skipped)
                continue
            if best is None or n < best[1]:
                best = (name, n)
        if best is not None:
            entries.append({"source": "timm", "family": module, "name": best[0], "parameters": best[1]})
    return entries


_TV_CLASSIFICATION = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
                      "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
                      "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
                      "swin_v2_t", "vgg11", "vgg11_bn", "vit_b_16", "wide_resnet50_2"]
_TV_SEGMENTATION = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                    "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
_SMP = ["Unet", "FPN", "Linknet"]
_HF = ["resnet", "regnet", "mobilenet_v2", "convnext", "vit"]


def all_models() -> list[dict]:
    entries = timm_models()
    entries += [{"source": "torchvision", "family": re.match(r"[a-z]+", name).group(0), "name": name}
                for name in _TV_CLASSIFICATION]
    entries += [{"source": "torchvision segmentation", "family": name.split("_")[0], "name": name, "select": "out"}
                for name in _TV_SEGMENTATION]
    entries += [{"source": "smp", "family": name, "name": f"{name}(resnet18)"} for name in _SMP]
    entries += [{"source": "Hugging Face", "family": name, "name": name, "select": "logits"} for name in _HF]
    return entries


# --------------------------------------------------------------------------- one model, in its own process
def _hf_model(kind: str):
    import transformers as T

    if kind == "resnet":
        return T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]))
    if kind == "regnet":
        return T.RegNetForImageClassification(T.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                             groups_width=8))
    if kind == "mobilenet_v2":
        return T.MobileNetV2ForImageClassification(T.MobileNetV2Config(depth_multiplier=0.35, image_size=64))
    if kind == "convnext":
        return T.ConvNextForImageClassification(T.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]))
    return T.ViTForImageClassification(T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, image_size=64, patch_size=16))


def build(entry: dict):
    source, name = entry["source"], entry["name"]
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    if source == "torchvision":
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    if source == "torchvision segmentation":
        import torchvision

        return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None)
    if source == "smp":
        import segmentation_models_pytorch as smp

        return getattr(smp, entry["family"])("resnet18", encoder_weights=None, classes=2)
    return _hf_model(name)


def _default_size(model, entry) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else (299 if "inception" in entry["name"] else 224)


def classify(error: BaseException) -> tuple[str, str]:
    """``(status, reason)`` of a lowering error."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, TypeError) and message.startswith("cannot lower "):
        operation = re.match(r"cannot lower '([^']+)'", message)
        return "refused: not piecewise linear", (operation.group(1) if operation else "") + ": " + message[:300]
    if isinstance(error, TypeError) and "torch.export cannot capture" in message:
        return "refused: cannot be captured", message[:300]
    if isinstance(error, ValueError) and "has no exact operator form" in message:
        return "refused: no exact form within the limits", message[:300]
    return "failed", f"{type(error).__name__}: {message[:300]}"


def run_one(entry: dict, size: int) -> dict:
    import dtd

    row = dict(entry)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(entry)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    model = model.double().eval()
    row["parameters"] = sum(p.numel() for p in model.parameters())
    shape = (3, size, size)
    try:
        try:
            net = dtd.ReLUNetwork.from_module(model, shape, select=entry.get("select"))
        except ValueError as error:
            if "fails on an input of shape" not in str(error):
                raise
            shape = (3,) + (_default_size(model, entry),) * 2
            net = dtd.ReLUNetwork.from_module(model, shape, select=entry.get("select"))
        x = torch.rand((2,) + shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        with torch.no_grad():
            out = model(x)
            if entry.get("select") is not None:
                out = out[entry["select"]]
            expected = out.flatten(1)
            got = net(x)
        row.update(status="lowered", layers=net.n_layers,
                   difference=float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-300)))
    except Exception as error:  # noqa: BLE001  (every outcome is a row)
        row["status"], row["reason"] = classify(error)
        if row["status"] == "failed":
            row["traceback"] = traceback.format_exc()[-3000:]
    row["input"] = list(shape)
    row["seconds"] = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------- the sweep
def sweep(entries: list[dict], size: int, timeout: int) -> list[dict]:
    rows = []
    for entry in entries:
        spec = json.dumps({"entry": entry, "size": size})
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "benchmarks.zoo", "--one", spec], capture_output=True,
                                  text=True, timeout=timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                row = dict(entry, status="failed", reason=f"exit {done.returncode}: {done.stderr[-500:]}")
            else:
                row = json.loads(lines[-1])
        except subprocess.TimeoutExpired:
            row = dict(entry, status="failed", reason=f"no result within {timeout} s")
        row.setdefault("seconds", time.perf_counter() - start)
        rows.append(row)
        print(f"{row['source']:>24} {row['name']:<32} {row['status']:<48} {row.get('reason', '')[:90]}", flush=True)
    return rows


def coverage(rows: list[dict]) -> str:
    lowered = sum(r["status"] == "lowered" for r in rows)
    budget = sum(r["status"] == "refused: no exact form within the limits" for r in rows)
    refused = sum(r["status"] == "refused: not piecewise linear" for r in rows)
    captured = sum(r["status"] == "refused: cannot be captured" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    inexact = sum(r["status"] == "lowered" and not r["difference"] <= 1e-8 for r in rows)
    return (f"{len(rows)} models: {lowered} lowered of {lowered + budget} piecewise-linear ones ({budget} without an "
            f"exact form within memory_budget and DENSE_WORK_LIMIT); {refused} refused by the operation that is not "
            f"piecewise linear; {captured} torch.export cannot capture; {failed} failed; {inexact} lowered with a "
            "forward difference above 1e-8")


#: the documentation page whose zoo table ``--docs`` rewrites (between the markers below)
ZOO_PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "zoo-models.md"
_BEGIN, _END = "<!-- zoo-table -->", "<!-- /zoo-table -->"


def _short_reason(row: dict) -> str:
    """A row's reason in a few words: the operation and module of a refusal, the operations and limit of a fold."""
    reason = row.get("reason") or ""
    refused = re.search(r"cannot lower ('[^']+' in module '[^']*' \([^)]*\)|'[^']+')", reason)
    if refused:
        return refused.group(1)
    fold = re.search(r"\(([^;()\[\]]+); modules ('[^']*')", reason)
    limit = "memory_budget" if "memory_budget=" in reason else "DENSE_WORK_LIMIT"
    if fold:
        return f"{fold.group(1)} from module {fold.group(2)} on: no exact form, above {limit}"
    return reason[:120]


def docs_table(data: dict) -> str:
    """The zoo page's section: the coverage line, a count per source and status, and one row per model."""
    rows = data["rows"]
    statuses = ["lowered", "refused: not piecewise linear", "refused: no exact form within the limits",
                "refused: cannot be captured", "failed"]
    sources = list(dict.fromkeys(r["source"] for r in rows))
    lines = [f"`python -m benchmarks.zoo` ({data['machine']}; random weights, batch-norm statistics randomised, "
             f"float64, 3x{data['size']}x{data['size']} unless a model needs its own input size; one fresh process "
             "per model):",
             "", f"**{data['coverage']}.**", "",
             "| source | " + " | ".join(statuses) + " |", "|---" * (len(statuses) + 1) + "|"]
    for source in sources:
        counts = [sum(r["source"] == source and r["status"] == st for r in rows) for st in statuses]
        lines.append(f"| {source} | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "| source | family | model | input | status | forward difference / reason | seconds |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        detail = f"{r['difference']:.1e}" if r["status"] == "lowered" else _short_reason(r).replace("|", "\\|")
        lines.append(f"| {r['source']} | {r['family']} | {r['name']} | {'x'.join(map(str, r.get('input', [])))} | "
                     f"{r['status']} | {detail} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def write_docs(results: Path, page: Path = ZOO_PAGE) -> None:
    """Rewrite the zoo page's section between its markers from ``results`` (a zoo.json)."""
    text = page.read_text()
    if _BEGIN not in text or _END not in text:
        raise SystemExit(f"{page} has no {_BEGIN} ... {_END} section to rewrite")
    head, rest = text.split(_BEGIN, 1)
    _, tail = rest.split(_END, 1)
    page.write_text(head + _BEGIN + "\n" + docs_table(json.loads(results.read_text())) + "\n" + _END + tail)
    print(f"{page} zoo table rewritten from {results}")


def table(rows: list[dict]) -> str:
    lines = ["| source | family | model | input | status | forward difference / reason | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        detail = (
            f"{r['difference']:.1e}" if r["status"] == "lowered" else (r.get("reason") or "").replace("|", "\\|")[:140]
        )
        lines.append(f"| {r['source']} | {r['family']} | {r['name']} | {'x'.join(map(str, r.get('input', [])))} | "
                     f"{r['status']} | {detail} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="models whose name or family contains one of these")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--docs", action="store_true",
                        help="only rewrite the table of docs/how-to/zoo-models.md from OUT/zoo.json")
    args = parser.parse_args(argv)
    if args.docs:
        write_docs(args.out / "zoo.json")
        return
    entries = all_models()
    if args.only:
        entries = [e for e in entries if any(s in e["name"] or s in e["family"] for s in args.only)]
    rows = sweep(entries, args.size, args.timeout)
    from benchmarks.workloads import machine

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.only:
        (args.out / "zoo.json").write_text(json.dumps({"machine": machine(), "size": args.size,
                                                       "coverage": coverage(rows), "rows": rows}, indent=2) + "\n")
    print(table(rows))
    print(coverage(rows))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        spec = json.loads(sys.argv[2])
        print(json.dumps(run_one(spec["entry"], spec["size"])))
    else:
        main()
