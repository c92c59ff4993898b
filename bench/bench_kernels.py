"""Forward+backward time of ONE mixer layer, chunked kernel vs naive recurrence, for every
registered architecture (or --archs). Prints a markdown table and writes
bench/results/kernels_<device>.md with the date, machine, torch version and command.

    python bench/bench_kernels.py                       # all archs, d 256, B 8, T 400 and 1300
    python bench/bench_kernels.py --archs mamba --T 400 --repeats 5

CPU: fp32, wall clock (perf_counter); memory = bytes autograd saved for backward
(deduplicated storages; the activation memory of the layer). GPU: bf16 autocast, CUDA
events after warm-up; memory = peak allocated during fwd+bwd above the inputs. The naive
loop is slow, so it runs --naive-repeats times (default 1) after a short warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from selectivbench.models import available, get_mixer, get_num_heads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="all", help="comma-separated architectures (default: every registered one)")
    p.add_argument("--T", default="400,1300", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d", type=int, default=256, help="nominal feat size (heads from it; the arch may remap the width)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the chunked kernel (median reported)")
    p.add_argument("--naive-repeats", type=int, default=1, help="timed repeats of the naive recurrence")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="results file (default bench/results/kernels_<device>.md)")
    p.add_argument("--skip-naive", action="store_true", help="time only the chunked kernel")
    p.add_argument("--chunk-sizes", default=None,
                   help="comma-separated chunk sizes to sweep (chunked kernel only; default: each arch's default)")
    args = p.parse_args(argv)
    args.T = [int(t) for t in args.T.split(",")]
    args.chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")] if args.chunk_sizes else [None]
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    registered = available()
    args.archs = registered if args.archs == "all" else args.archs.split(",")
    unknown = [a for a in args.archs if a not in registered]
    if unknown:
        p.error(f"--archs: unknown architecture(s) {unknown}; registered: {registered}")
    return args


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}"


def saved_bytes(fn) -> tuple[object, int]:
    """Run fn() and count the bytes autograd keeps for backward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def time_layer(layer, x, dy, device: str, repeats: int, warmup: int):
    """Median fwd+bwd milliseconds over `repeats` and the memory figure (see module doc)."""
    cuda = device == "cuda"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            y = layer(x)
        y.backward(dy)
        return y

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            mem = torch.cuda.max_memory_allocated() - base
        else:
            t0 = time.perf_counter()
            _, mem = saved_bytes(step)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), mem


def bench_arch(arch: str, T: int, args, chunk_size: int | None = None, time_naive: bool = True) -> dict:
    cls = get_mixer(arch)
    width = cls.model_width(args.d)
    if width is None:
        return {"arch": arch, "T": T, "note": f"no model at d={args.d}"}
    torch.manual_seed(0)
    chunk_size = chunk_size or cls.default_chunk_size
    layer = cls(d_model=width, n_head=get_num_heads(args.d), d_state=cls.default_d_state,
                chunk_size=chunk_size).to(args.device)
    layer.eval()  # no dropout: both paths compute the same function
    x = torch.randn(args.batch, T, width, device=args.device, requires_grad=True)
    dy = torch.randn(args.batch, T, width, device=args.device)
    row = {"arch": arch, "T": T, "C": chunk_size}
    layer.mode = "chunk"
    row["chunk_ms"], row["chunk_mem"] = time_layer(layer, x, dy, args.device, args.repeats, warmup=2)
    if time_naive:
        layer.mode = "naive"
        # warm the naive path on a short prefix: its full length costs seconds on CPU
        short = min(T, 16)
        time_layer(layer, x[:, :short].detach().requires_grad_(), dy[:, :short], args.device, 1, warmup=0)
        row["naive_ms"], row["naive_mem"] = time_layer(layer, x, dy, args.device, args.naive_repeats,
                                                       warmup=1 if args.device == "cuda" else 0)
    return row


def format_table(rows, device: str) -> str:
    mem = "peak alloc MB" if device == "cuda" else "saved MB"
    lines = [f"| arch | T | chunk C | chunk ms | naive ms | speedup | chunk {mem} | naive {mem} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['arch']} | {r['T']} | | {r['note']} | | | | |")
            continue
        naive = r.get("naive_ms")
        mb = lambda b: f"{b / 2**20:.0f}"
        cells = [r["arch"], r["T"], r["C"], f"{r['chunk_ms']:.1f}", "-", "-", mb(r["chunk_mem"]), "-"]
        if naive is not None:
            cells[4], cells[5], cells[7] = f"{naive:.1f}", f"{naive / r['chunk_ms']:.1f}x", mb(r["naive_mem"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        command = f"OMP_NUM_THREADS={threads} " + command
    rows, failed = [], False
    for arch in args.archs:
        for T in args.T:
            for i, chunk_size in enumerate(args.chunk_sizes):
                try:  # a chunk-size sweep times the naive loop once
                    row = bench_arch(arch, T, args, chunk_size, time_naive=not args.skip_naive and i == 0)
                except Exception as exc:  # one broken mixer must not hide the others' numbers
                    row, failed = {"arch": arch, "T": T, "note": f"error: {type(exc).__name__}: {exc}"}, True
                rows.append(row)
                print(format_table([row], args.device).splitlines()[-1], flush=True)
    table = format_table(rows, args.device)
    precision = "bf16 autocast, CUDA events" if args.device == "cuda" else "fp32, wall clock"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    header = [
        f"# Mixer kernels: chunked vs naive, one layer fwd+bwd ({args.device})",
        "",
        f"* date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* machine: {machine_name(args.device)}; load average at the end {load}",
        f"* torch {torch.__version__}; {precision}; d {args.d}, batch {args.batch}; "
        f"chunk: median of {args.repeats}, naive: median of {args.naive_repeats}",
        f"* command: `{command}`",
        "",
        "",
    ]
    text = "\n".join(header) + table + "\n"
    print("\n" + text)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"kernels_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
