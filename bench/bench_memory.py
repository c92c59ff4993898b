"""Memory of one training step per architecture, with and without activation recomputation.

    python bench/bench_memory.py                    # CPU proxy, predicts the peak at feat 1296, T 2200, B 64, 8 layers
    python bench/bench_memory.py --device cuda      # the same proxy on the GPU + the real peak of a training step

Proxy (any device, no allocator statistics needed): a TorchDispatchMode sees every op of the
forward and backward and keeps the bytes of the tensor storages they created that are still
alive (freed storages are noticed through weak references), so its peak is what
`torch.cuda.max_memory_allocated` counts minus kernel workspaces and allocator rounding.
Alongside, `saved_tensors_hooks` sum the tensors autograd keeps for backward (deduplicated by
storage, parameters and their bf16 casts excluded by the fit below). Every quantity is affine in
the batch B and in the number of layers L at a fixed shape (same ops, proportionally sized
tensors; the peak sits in the topmost layer's backward whatever L), so four small runs —
L ∈ {1, 2} × B ∈ {1, 2} at the full T and width — give the exact bilinear fit, extrapolated to
L = 8, B = 64. The predicted peak adds params + Adam moments (12 bytes per parameter; gradients
are counted by the proxy).

Columns, per token (one sequence step) per layer: `saved` = bytes autograd saves (recompute
off), `held` = bytes still alive after the forward (what the backward needs), for recompute
off / on; `peak` = predicted GiB of the whole step. With `--device cuda` the real peak of the
second of two training updates (`train_update`: forward, backward, clip, Adam) at the target
shape follows: max_memory_allocated (max_memory_reserved) in GiB, or OOM, with its step time;
`fits` then judges the reserved peak.

Writes bench/results/memory_<device>.md (--out to change).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from selectivbench import runio
from selectivbench.inputs import Batch
from selectivbench.memory import LiveBytes, saved_tensor_bytes
from selectivbench.metrics import masked_cross_entropy
from selectivbench.models import RecNet, available, get_mixer, load_plugins
from selectivbench.models import layers as model_layers

VOCAB, CLASSES = 41, 1601  # amb 40 (the paper's Task 2)
GiB = 2**30
SLICE = getattr(model_layers, "BACKWARD_SLICE", 2**25)


def synthetic_batch(B: int, T: int, device) -> Batch:
    g = torch.Generator().manual_seed(0)
    data = torch.nn.functional.one_hot(torch.randint(0, VOCAB, (B, T), generator=g), VOCAB).float()
    data += 0.2 * torch.rand(B, T, VOCAB, generator=g)  # Task-2 noise: dense inputs
    labels = torch.randint(0, CLASSES, (B, T), generator=g)
    element = (torch.arange(T) * 200 // T).expand(B, T).contiguous()
    return Batch(data, labels, torch.ones(B, T), element).to(device)


class CudaAutocastLayerNorm(torch.nn.LayerNorm):
    """LayerNorm as CUDA autocast runs it (its fp32 list: fp32 output, so the residual stream is
    fp32); CPU autocast would return bf16 for a bf16 input and halve the stream in the proxy."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def build(arch: str, feat: int, layers: int, recompute: bool, device, proxy: bool = False) -> RecNet:
    torch.manual_seed(0)
    model = RecNet(arch, feat, VOCAB, CLASSES, n_layers=layers, recompute=recompute).to(device)
    if proxy:
        for norm in model.norms:
            norm.__class__ = CudaAutocastLayerNorm
    return model.train()


def proxy_run(arch, feat, T, B, layers, recompute, device, dtype, target_batch: int) -> dict:
    """One forward + backward under the trackers: saved bytes, held bytes after forward, peak.

    Backwards that work in slices of a fixed size (layers.BACKWARD_SLICE) get a slice
    scaled by B / target_batch, so the small run has the target's slice count and every
    transient stays proportional to B."""
    model = build(arch, feat, layers, recompute, device, proxy=True)
    model_layers.BACKWARD_SLICE = max(1, SLICE * B // target_batch)
    batch = synthetic_batch(B, T, device)
    with LiveBytes() as mem:
        with saved_tensor_bytes() as saved:
            with runio.autocast(device, dtype):
                logits = model(batch.data)
            loss = masked_cross_entropy(logits, batch.labels, batch.mask)
        held = mem.now
        loss.backward()
        peak = mem.peak
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return {"saved": sum(n for k, n in saved.items() if k not in params), "held": held, "peak": peak}


def bilinear(runs: dict, key: str, L: int, B: int) -> tuple[float, float]:
    """(value at L, B; coefficient of L*B) from runs at L, B in {1, 2}."""
    f = lambda l, b: runs[(l, b)][key]  # noqa: E731
    per_layer, per_sample, lb = f(2, 1) - f(1, 1), f(1, 2) - f(1, 1), f(2, 2) - f(2, 1) - f(1, 2) + f(1, 1)
    return f(1, 1) + (L - 1) * per_layer + (B - 1) * per_sample + (L - 1) * (B - 1) * lb, lb


def proxy(arch, args, device, dtype, recompute: bool) -> dict:
    runs = {(l, b): proxy_run(arch, args.feat, args.T, b, l, recompute, device, dtype, args.batch) for l in (1, 2) for b in (1, 2)}
    model_layers.BACKWARD_SLICE = SLICE
    n_params = build(arch, args.feat, args.layers, recompute, "cpu").num_parameters()
    out = {}
    for key in ("saved", "held", "peak"):
        total, lb = bilinear(runs, key, args.layers, args.batch)
        out[key + "_per_token_layer"] = lb / args.T
        out[key + "_GiB"] = total / GiB
    out["peak_GiB"] += 12 * n_params / GiB  # fp32 params + Adam's two moments
    out["params_M"] = n_params / 1e6
    return out


def cuda_step(arch, args, device, dtype, recompute: bool) -> dict:
    """Real peak of the second of two training updates at the target shape (or OOM)."""
    from selectivbench.train import train_update

    model = opt = None
    torch.cuda.empty_cache()
    try:
        model = build(arch, args.feat, args.layers, recompute, device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
        batch = synthetic_batch(args.batch, args.T, device)
        train_update(model, opt, iter([batch]), 1, 1e-4, 1.0, device, dtype)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        train_update(model, opt, iter([batch]), 1, 1e-4, 1.0, device, dtype)
        torch.cuda.synchronize(device)
        return {"cuda_GiB": torch.cuda.max_memory_allocated(device) / GiB, "step_s": time.perf_counter() - t0,
                "reserved_GiB": torch.cuda.max_memory_reserved(device) / GiB}
    except RuntimeError as err:
        if not runio.is_oom(err):
            raise
        return {"cuda_GiB": None, "step_s": None, "reserved_GiB": None}
    finally:
        del model, opt
        torch.cuda.empty_cache()


def fmt(v, spec=".1f"):
    return "OOM" if v is None else format(v, spec)


def cuda_cell(r: dict) -> str:
    """max allocated (max reserved by the caching allocator), GiB."""
    return "OOM" if r["cuda_GiB"] is None else f"{r['cuda_GiB']:.1f} ({r['reserved_GiB']:.1f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", nargs="*", default=None, help="default: every registered architecture")
    p.add_argument("--feat", type=int, default=1296, help="nominal feat_size (transformer: 1296 -> width 1280)")
    p.add_argument("--T", type=int, default=2200, help="sequence length (Task 2's longest: 2200)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--budget", type=float, default=70.0, help="GB (1e9 bytes) a step may use")
    p.add_argument("--no-cuda-step", action="store_true", help="with --device cuda: proxy only")
    p.add_argument("--plugins", nargs="*", default=[])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    load_plugins(args.plugins)
    device = torch.device(args.device)
    dtype = torch.bfloat16  # the training precision on CUDA; CPU autocast gives the same dtypes
    # Mamba-1: the CUDA scan backend (the CPU one saves the same tensors but allocates differently)
    os.environ.setdefault("SELECTIVBENCH_SCAN_BACKEND", "block")
    cuda = device.type == "cuda" and not args.no_cuda_step
    archs = args.archs or available()

    head = ["arch", "width", "params_M", "saved B/tok/layer", "held off", "held on", "peak off GiB", "peak on GiB"]
    head += ["cuda off GiB", "cuda on GiB", "step off s", "step on s"] if cuda else []
    head += [f"fits {args.budget:g} GB"]
    rows = []
    print(" | ".join(head), flush=True)
    for arch in archs:
        width = get_mixer(arch).model_width(args.feat)
        if width is None:
            continue
        t0 = time.perf_counter()
        off, on = (proxy(arch, args, device, dtype, r) for r in (False, True))
        row = [arch, str(width), f"{off['params_M']:.1f}", f"{off['saved_per_token_layer']:.0f}",
               f"{off['held_per_token_layer']:.0f}", f"{on['held_per_token_layer']:.0f}",
               f"{off['peak_GiB']:.1f}", f"{on['peak_GiB']:.1f}"]
        best = min(off["peak_GiB"], on["peak_GiB"]) * GiB / 1e9
        if cuda:
            r_off, r_on = (cuda_step(arch, args, device, dtype, r) for r in (False, True))
            row += [cuda_cell(r_off), cuda_cell(r_on), fmt(r_off["step_s"], ".2f"), fmt(r_on["step_s"], ".2f")]
            measured = [r["reserved_GiB"] for r in (r_off, r_on) if r["cuda_GiB"] is not None]
            best = min(measured) * GiB / 1e9 if measured else float("inf")
        row.append("yes" if best <= args.budget else "no")
        rows.append(row)
        print(" | ".join(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    dev = runio.describe_device(device)
    cmd = "python bench/bench_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# bench_memory {stamp} on {platform.node()} / {dev} / torch {torch.__version__} / bf16 autocast",
        "",
        f"command: `{cmd.strip()}`",
        "",
        f"Shape: feat {args.feat}, T {args.T}, B {args.batch}, {args.layers} layers, V {VOCAB}, C {CLASSES}. "
        "Per-token-per-layer bytes and predicted peaks from the proxy (see the script's docstring); "
        "`held on` is what recomputation keeps per layer (its input, fp32: 4·width bytes).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    out = Path(args.out or Path(__file__).parent / "results" / f"memory_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
