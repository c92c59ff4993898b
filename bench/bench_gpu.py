"""GPU speed of the full 8-layer training step: our kernels (eager, compiled) against fla's layers.

    python bench/bench_gpu.py --feats 256 512 1024 --lengths 400 1300 2200 --out bench/results

One step = forward (bf16 autocast, fp32 weights), masked cross-entropy, backward, gradient clip
1.0, fused Adam: what `selectivbench train` runs per update, on fixed-length random one-hot inputs
(V 41, C 1601: amb 40). Variants, each its own process:

* `eager`    our RecNet as `train` builds it;
* `compiled` the whole loss function (model + cross-entropy) under torch.compile, static shapes;
* `mixers`   what `compile: true` training runs (train.compiled: each mixer compiled, one graph shared
             by the layers, the rest eager): compiles in about a third of the time;
* `fla`      RecNet with every mixer replaced by fla 0.6.0's layer with the paper's arguments
             (bench/crosscheck_fla.py), same wrapper, same step. No fla peer for the Transformer.

With --jobs > 1, processes compile side by side but take turns on the GPU for the timed steps (a
file lock). Measured on an H100: that is not enough, eager steps are launch-bound and ran 2-5x
slower while other processes compiled; time with --jobs 1, and fill fla's Triton caches first
with a --warm-only run (TRITON_CACHE_AUTOTUNING=1 keeps its autotune choices). A shape that runs out of memory while
others share the GPU is retried alone. Rows stream to <out>/gpu_<date>.csv as they arrive, so a run
cut off at its time limit keeps what it measured; the Markdown table adds ours/fla ratios.
Needs CUDA; fla is optional (its column is empty without it). Does not use ../shared.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB, CLASSES, BATCH = 41, 1601, 64
COLUMNS = ["arch", "variant", "feat", "T", "B", "ms_step", "tokens_per_s", "peak_GiB", "steps_timed",
           "warm_s", "params_M", "recompute", "error"]


# ---------------------------------------------------------------------------- one process


def build_model(arch: str, variant: str, feat: int, recompute: str):
    import inspect

    import torch
    from torch import nn

    from selectivbench.models import RecNet

    kwargs = {}
    if "recompute" in inspect.signature(RecNet).parameters:
        kwargs["recompute"] = recompute == "true"  # auto: off first, on after an OOM (worker)
    model = RecNet(arch, feat, VOCAB, CLASSES, **kwargs)
    if variant == "fla":
        sys.path.insert(0, str(HERE))
        from crosscheck_fla import build_fla_layer

        class FlaMixer(nn.Module):
            def __init__(self, layer):
                super().__init__()
                self.layer = layer

            def forward(self, x):
                y = self.layer(x)
                return y[0] if isinstance(y, tuple) else y

        model.mixers = nn.ModuleList(
            FlaMixer(build_fla_layer(arch, model.width, model.n_head, model.d_state)) for _ in model.mixers
        )
    return model


def measure(arch: str, variant: str, feat: int, T: int, recompute: str, lock_path: str, min_time: float,
            warm_only: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: a smoke test only
    cuda = dev.type == "cuda"
    row = {"arch": arch, "variant": variant, "feat": feat, "T": T, "B": BATCH}
    torch.manual_seed(0)
    model = build_model(arch, variant, feat, recompute).to(dev).train()
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
    row["recompute"] = getattr(model, "recompute", "n/a")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda or None)
    x = F.one_hot(torch.randint(0, VOCAB, (BATCH, T), device=dev), VOCAB).float()
    labels = torch.randint(0, CLASSES, (BATCH, T), device=dev)

    if variant == "mixers":  # what `compile: true` training runs
        from selectivbench.train import compiled

        net = compiled(model)
    else:
        net = model

    def loss_fn(x, labels):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = net(x)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    # static shapes: with the time axis marked dynamic, inductor fails on our chunk padding
    # (CantSplit, ConstraintViolation: measured on an H100, torch 2.11), so training pads
    # batches to a few fixed lengths to bound the recompiles
    fn = torch.compile(loss_fn, dynamic=False) if variant == "compiled" else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fn(x, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def warm() -> float:
        t0 = time.perf_counter()
        for _ in range(2):  # the first compiles (torch.compile / Triton autotune); the second settles
            step()
        sync()
        return time.perf_counter() - t0

    def warm_or_retry(lock) -> float:
        """warm(); after an OOM (others were on the GPU too), once more holding the lock, which timed
        runs hold while they step."""
        try:
            return round(warm(), 1)
        except torch.OutOfMemoryError:
            pass  # retried below, outside the except block: its traceback holds the failed step's tensors
        opt.zero_grad(set_to_none=True)
        sync()
        torch.cuda.empty_cache()
        fcntl.flock(lock, fcntl.LOCK_EX)
        return round(warm(), 1)

    with open(lock_path, "w") as lock:
        if warm_only:  # fill the compile/autotune caches for a later timed run; no timing
            row["warm_s"] = warm_or_retry(lock)
            return row
        if feat * T > 256 * 2200:  # big shapes warm up alone too: a neighbour's warm-up must not OOM a timed run
            fcntl.flock(lock, fcntl.LOCK_EX)
        row["warm_s"] = warm_or_retry(lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = []
            while len(times) < 10 and (len(times) < 3 or sum(times) < min_time):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
                if times[0] > 5 and len(times) >= 2:  # slow paths (naive-loop peers): two steps say enough
                    break
            row["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    ms = statistics.median(times) * 1000
    row.update(ms_step=round(ms, 1), tokens_per_s=round(BATCH * T / ms * 1000), steps_timed=len(times))
    return row


def worker(args) -> int:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    for feat in args.feats:
        for T in args.lengths:
            if time.time() > args.deadline:
                row = {"arch": args.arch, "variant": args.variant, "feat": feat, "T": T, "error": "not run: time limit"}
            else:
                try:
                    oom = False
                    try:
                        row = measure(args.arch, args.variant, feat, T, args.recompute, args.lock, args.min_time, args.warm_only)
                    except torch.OutOfMemoryError:
                        if args.recompute != "auto":
                            raise
                        oom = True  # retried below, outside this block: the error's traceback holds the step's tensors
                    if oom:  # like training's recompute auto: on when the step does not fit
                        gc.collect()
                        torch.cuda.empty_cache()
                        row = measure(args.arch, args.variant, feat, T, "true", args.lock, args.min_time, args.warm_only)
                except Exception as err:  # fla refusals, OOM alone on the GPU: the row says which
                    msg = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
                    row = {"arch": args.arch, "variant": args.variant, "feat": feat, "T": T,
                           "error": "OOM" if isinstance(err, torch.OutOfMemoryError) else f"{type(err).__name__}: {msg}"}
                if args.variant in ("compiled", "mixers"):
                    torch._dynamo.reset()  # the compiled fn holds the last model alive otherwise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            print("RESULT " + json.dumps(row), flush=True)
    return 0


# ---------------------------------------------------------------------------- driver


def merge_rows(rows: list[dict]) -> list[dict]:
    """One row per (arch, variant, feat, T) from several runs: a measured row beats an error row
    ("not run: time limit" in one call, measured in the next), the later of two of a kind wins."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["arch"], r["variant"], int(r["feat"]), int(r["T"]))
        if key not in best or r.get("ms_step") or not best[key].get("ms_step"):
            best[key] = r
    return list(best.values())


def ratio_table(rows: list[dict]) -> list[str]:
    """ours best (eager or compiled) / fla, per (arch, feat, T): < 1 means ours is faster.
    A cell without a time says why where the run said (OOM, fla's refusal); '–' = not run."""
    by = {}
    for r in rows:
        key = (r["arch"], int(r["feat"]), int(r["T"]))
        if r.get("ms_step"):
            by.setdefault(key, {})[r["variant"]] = r["ms_step"]
        elif r.get("error") and not r["error"].startswith("not run"):
            by.setdefault(key, {}).setdefault(r["variant"], r["error"].split(":")[0])
    lines = ["| arch | feat | T | eager ms | compiled ms | mixers ms | fla ms | best ours / fla |",
             "|---|---|---|---|---|---|---|---|"]
    for (arch, feat, T), v in sorted(by.items()):
        ours = [v[k] for k in ("eager", "compiled", "mixers") if isinstance(v.get(k), float)]
        ratio = f"{min(ours) / v['fla']:.2f}" if ours and isinstance(v.get("fla"), float) else "–"
        lines.append(f"| {arch} | {feat} | {T} | {v.get('eager', '–')} | {v.get('compiled', '–')} | {v.get('mixers', '–')} | {v.get('fla', '–')} | {ratio} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=None, help="default: every registered architecture")
    p.add_argument("--variants", nargs="+", default=["eager", "mixers", "compiled", "fla"],
                   choices=["eager", "mixers", "compiled", "fla"])
    p.add_argument("--feats", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--lengths", nargs="+", type=int, default=[400, 1300, 2200])
    p.add_argument("--recompute", default="auto", choices=["auto", "true", "false"],
                   help="per-layer recomputation: auto = off, on where the step runs out of memory (default)")
    p.add_argument("--jobs", type=int, default=4, help="processes compiling at once (the timed steps take turns)")
    p.add_argument("--time-limit", type=float, default=1e9, help="seconds; shapes not started by then are listed as not run")
    p.add_argument("--min-time", type=float, default=2.0, help="timed seconds per shape (3 to 10 steps)")
    p.add_argument("--warm-only", action="store_true", help="only compile/autotune (run in the background "
                   "with TRITON_CACHE_AUTOTUNING=1 while another run times; timings from concurrent processes are "
                   "not trustworthy: eager PyTorch is launch-bound and compiles load the CPU)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default=None, help="file name stem (default gpu_<date>)")
    # worker mode
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--lock", help=argparse.SUPPRESS)
    p.add_argument("--merge", nargs="+", metavar="CSV", help="only write <out>/<tag>.md from these CSVs of earlier runs")
    args = p.parse_args(argv)
    if args.arch:
        return worker(args)
    if args.merge:
        rows = [dict(r) for f in args.merge for r in csv.DictReader(open(f))]
        for r in rows:
            r["ms_step"] = float(r["ms_step"]) if r.get("ms_step") else None
        rows = merge_rows(rows)
        head = f"# GPU training step, 8 layers, B {BATCH}, bf16 autocast (merged from {', '.join(map(os.path.basename, args.merge))})\n"
        return write_markdown(rows, Path(args.out) / f"{args.tag or 'gpu'}.md", head)

    import importlib.util

    import torch

    from selectivbench.models import available

    has_fla = importlib.util.find_spec("fla") is not None
    archs = args.archs or available()
    jobs = [(a, v) for a in archs for v in args.variants if not (v == "fla" and (not has_fla or a == "transformer"))]
    jobs.sort(key=lambda j: (j[0] != "mamba", j[1] != "fla"))  # the slowest first so they are not cut off
    deadline = time.time() + args.time_limit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"gpu_{datetime.date.today():%Y%m%d}"
    lock = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_gpu_{os.getuid()}.lock")
    csv_path = out / f"{tag}.csv"
    rows: list[dict] = []
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()

        def run_job(job):
            arch, variant = job
            cmd = [sys.executable, __file__, "--arch", arch, "--variant", variant, "--lock", lock,
                   "--deadline", str(deadline), *(["--warm-only"] if args.warm_only else []), "--recompute", args.recompute, "--min-time", str(args.min_time),
                   "--feats", *map(str, args.feats), "--lengths", *map(str, args.lengths)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    row = json.loads(line[7:])
                    rows.append(row)
                    writer.writerow(row)
                    f.flush()
                    print(json.dumps(row), flush=True)
            err = proc.stderr.read()
            if proc.wait() != 0:
                print(f"{arch}/{variant} exited {proc.returncode}: {err.strip().splitlines()[-1:] }", flush=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(run_job, jobs))

    versions = f"torch {torch.__version__}"
    if has_fla:
        import fla
        import triton

        versions += f", triton {triton.__version__}, fla {fla.__version__}"
    head = (f"# GPU training step, 8 layers, B {BATCH}, bf16 autocast: {datetime.datetime.now():%Y-%m-%d %H:%M} on "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, {versions}\n\ncommand: `python bench/bench_gpu.py "
            + " ".join(sys.argv[1:] if argv is None else argv) + "`\n")
    return write_markdown(rows, out / f"{tag}.md", head)


def write_markdown(rows: list[dict], path: Path, head: str) -> int:
    full = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    full += ["| " + " | ".join(str(r.get(c) if r.get(c) is not None else "") for c in COLUMNS) + " |" for r in
             sorted(rows, key=lambda r: (r["arch"], int(r["feat"]), int(r["T"]), r["variant"]))]
    md = "\n".join([head, "## ours / fla", "", *ratio_table(rows), "", "## every row", "", *full]) + "\n"
    path.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
