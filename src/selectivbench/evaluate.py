"""`selectivbench evaluate`: test a trained run's checkpoint under another test condition (Task 4).

Task 4 (spec §9) trains nothing: it loads the Task-2 checkpoint of one (model, feat, lr, warmup,
seed) -- keyed by warmup too, unlike the reference (§15.7) -- and tests it with a fixed gap of
test_dur in {1, 2, 5, 10} time units (10..100 steps per gap, L up to 20 200) and noise 0.2.

    selectivbench evaluate --run RUN_DIR --dataset DIR --out OUT_DIR --set test_gap=10

It also tests a run in the other test mode: `--dataset` may be any dataset directory with the
run's training samples (same grammar, seed, size, start, ...) whatever its test split, e.g. the
`heldout` twin of the `faithful` dataset the run was trained on; anything else is refused with
the differing keys named.

`run_test` is also the test pass of `selectivbench train`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selectivbench import config as C
from selectivbench import runio
from selectivbench.inputs import InputSpec, make_batch
from selectivbench.metrics import element_accuracy, masked_cross_entropy

# keys that describe the test condition or the machine; everything else is fixed by the run
EVAL_KEYS = ("test_gap", "noise", "gap_prob", "gap_start", "grammar_gap", "test_size", "test_bs", "device", "precision", "progress")


def prefetched(make, keys):
    """Yield make(k) for k in keys, building the next one in a thread while the caller computes.

    numpy's bulk random fills release the GIL, so the noise of the next batch is drawn while the
    accelerator works on the current one.
    """
    from concurrent.futures import ThreadPoolExecutor

    keys = list(keys)
    if not keys:
        return
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(make, keys[0])
        for k in keys[1:]:
            cur, nxt = nxt.result(), pool.submit(make, k)
            yield cur
        yield nxt.result()


def _test_pass(model, classes, grammar, spec, seed, epoch, batch_size, device, dtype, first_index=0):
    n = len(classes)

    def make(start):
        stop = min(n, start + batch_size)
        index = np.arange(first_index + start, first_index + stop)
        batch = make_batch(classes[start:stop], index, grammar, spec, "test", seed, epoch)
        return batch.pin_memory() if device.type == "cuda" else batch

    loss_sum = acc_sum = 0.0
    steps = longest = 0
    for batch in prefetched(make, range(0, n, batch_size)):
        batch = batch.to(device, non_blocking=True)
        with runio.autocast(device, dtype):
            logits = model(batch.data)
        B = len(batch.labels)
        loss_sum += masked_cross_entropy(logits, batch.labels, batch.mask).item() * B
        acc_sum += element_accuracy(logits, batch.labels, batch.element).item() * B
        steps += batch.num_steps
        longest = max(longest, batch.data.shape[1])
        del logits
    return {"test_loss": loss_sum / n, "test_acc": acc_sum / n, "test_steps": steps, "test_max_len": longest, "test_bs_used": batch_size}


@torch.no_grad()
def run_test(model, classes, grammar, spec: InputSpec, seed: int, epoch: int, batch_size: int, device, dtype,
             first_index: int = 0) -> dict:
    """Test loss/accuracy over `classes` (test indices 0..n-1), each batch weighted by its size (§8).

    `first_index` shifts the indices that seed each sample's gaps/noise (the validation pass uses
    its training-stream positions, so its inputs never repeat a test sample's).

    Batches follow index order (the reference shuffles them; the accuracy does not depend on the
    grouping, the loss only through the per-batch means). On CUDA out-of-memory the batch is
    halved and the pass restarted.
    """
    was_training = model.training
    model.eval()
    try:
        while True:
            try:
                return _test_pass(model, classes, grammar, spec, seed, epoch, batch_size, device, dtype, first_index)
            except RuntimeError as err:
                if device.type != "cuda" or not runio.is_oom(err) or batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()
    finally:
        model.train(was_training)


def evaluate_run(run_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, overrides: dict) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for name in overrides:
        if name not in C.FIELDS:
            raise C._unknown_key(name)
        if name not in EVAL_KEYS:
            raise C.ConfigError(f"config key {name!r} is fixed by the trained run; evaluate may change only: {', '.join(EVAL_KEYS)}")
    ckpt_path = run_dir / "checkpoint.pt"
    if not (run_dir / "config.yaml").is_file() or not ckpt_path.is_file():
        raise C.ConfigError(f"run directory {str(run_dir)!r} has no config.yaml/checkpoint.pt; train it first with `selectivbench train`")
    if not (run_dir / "metrics.json").is_file():
        raise C.ConfigError(f"run {str(run_dir)!r} has not finished (no metrics.json); run its `selectivbench train` command again to finish it")
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = C.resolve({**C.load_yaml(run_dir / "config.yaml"), **overrides})

    dataset = runio.open_dataset(dataset_dir)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    # only the training identity must match: the test split may differ (faithful -> held-out)
    mismatch = runio.training_identity_mismatch(ckpt["dataset"], runio.dataset_identity(dataset, dataset_dir))
    if mismatch:
        raise C.ConfigError(f"dataset {str(dataset_dir)!r} does not hold the training samples run {str(run_dir)!r} was trained on; "
                            f"differing dataset keys: {'; '.join(mismatch)}")

    device = runio.pick_device(cfg)
    dtype = runio.pick_dtype(cfg, device)
    model = runio.build_model(cfg, dataset.grammar)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n_test = cfg.test_size or len(dataset.test)
    if n_test > len(dataset.test):
        raise C.ConfigError(f"config key 'test_size' ({n_test}) exceeds the dataset's {len(dataset.test)} test samples")

    t0 = time.perf_counter()
    result = run_test(model, dataset.test[:n_test], dataset.grammar, cfg.input_spec(), cfg.seed, 0, cfg.test_bs, device, dtype)
    wall = time.perf_counter() - t0
    metrics = {
        "test_acc": result["test_acc"],
        "test_loss": result["test_loss"],
        "test_gap": cfg.input_spec().test_delay,
        "noise": cfg.noise,
        "test_size": n_test,
        "test_split": dataset.meta["config"]["test_split"],
        "test_indices": dataset.meta.get("test_indices"),
        "dataset_config_hash": dataset.meta.get("config_hash"),
        "test_bs": result["test_bs_used"],
        "test_max_len": result["test_max_len"],
        "run": str(run_dir.resolve()),
        "run_config_hash": ckpt["config_hash"],
        "run_status": run_metrics.get("status"),
        "checkpoint_update": ckpt["progress"]["update"],
        "arch": cfg.arch, "feat_size": cfg.feat_size, "task": cfg.task, "lr": cfg.lr, "warmup": cfg.warmup, "seed": cfg.seed,
        "device": runio.describe_device(device),
        "precision": str(dtype).replace("torch.", ""),
        "wall_s": wall,
        "tokens_per_s": result["test_steps"] / wall if wall > 0 else None,
        "peak_memory_bytes": runio.peak_memory_bytes(device),
        "config": cfg.to_dict(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    runio.atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="selectivbench evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys --set may change: " + ", ".join(EVAL_KEYS),
    )
    p.add_argument("--run", required=True, help="a finished run directory of `selectivbench train` (config.yaml, checkpoint.pt)")
    p.add_argument("--dataset", required=True, help="a dataset with the run's training samples; its test split may differ (faithful or heldout)")
    p.add_argument("--out", required=True, help="output directory; receives metrics.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a test-condition key, e.g. test_gap=10")
    args = p.parse_args(argv)
    try:
        m = evaluate_run(args.run, args.dataset, args.out, C.parse_sets(args.set))
    except C.ConfigError as err:
        print(f"selectivbench evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"test_acc {m['test_acc']:.4f}  test_loss {m['test_loss']:.4f}  test_gap {m['test_gap']}  ({m['wall_s']:.1f} s)")
    return 0
