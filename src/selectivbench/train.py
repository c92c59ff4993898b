"""`selectivbench train`: one run of one task / architecture / size / lr / warmup / seed (spec §11).

    selectivbench train --dataset DIR --out RUN_DIR [--config YAML] [--set key=value ...]

RUN_DIR receives config.yaml (resolved config + hash), evals.csv (one row per evaluation),
checkpoint.pt (model, optimizer, RNG states, data position), train.log, and metrics.json once the
run has ended (completed or diverged).

Faithful to §11: Adam (0.9/0.999, eps 1e-8, wd 0); lr factor u/warmup for update u < warmup (the
first update uses lr 0), then cosine to 0 at dataset_size // batch_size updates; grad-norm clip
1.0; one pass in index order; a test evaluation every 78 updates, the last one is the headline;
dropout off after the first evaluation (§15.3, `dropout_quirk`). Deviation: with gradient
accumulation the micro-batch losses are *averaged* (the reference sums them, §15.9), so the clip
threshold means the same whatever the micro-batch.

Validation (`val_size` > 0, not in the reference): at the end, one test pass over the training
stream's samples dataset_size .. dataset_size+val_size-1, which the run never trained on (sampled
by index range when the dataset file stops earlier) -> val_acc, val_loss in metrics.json, used for
hyper-parameter selection instead of the test set.

Never loses a result: SIGTERM/SIGINT/SIGUSR1 make the run finish its update, write a checkpoint
and exit 75; the same command resumes it, bit-identically on CPU. A NaN/Inf loss or gradient
norm ends the run as `diverged` (exit 0, metrics written) so that a sweep goes on.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from selectivbench import config as C
from selectivbench import runio
from selectivbench.evaluate import prefetched, run_test
from selectivbench.inputs import make_batch
from selectivbench.metrics import element_accuracy, masked_cross_entropy

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 75
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
CHECKPOINT_FORMAT = 1
EVAL_COLUMNS = ["eval", "update", "samples", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s"]

log = logging.getLogger("selectivbench.train")


def lr_factor(update: int, warmup: int, total: int) -> float:
    """LambdaLR factor of §11 for 0-based update `update`: linear warm-up, then cosine to 0."""
    if update < warmup:
        return update / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (update - warmup) / max(1, total - warmup)))


@dataclass
class Progress:
    """Everything that changes during a run and must survive a resume."""

    update: int = 0  # optimizer updates done = data position / batch_size
    micro_batch: int = 0
    recompute: bool = False  # activation recomputation (RecNet.recompute), chosen when the run started
    evals: list = field(default_factory=list)  # rows of evals.csv
    window_loss: float = 0.0  # sums over the updates since the last evaluation
    window_acc: float = 0.0
    window_n: int = 0
    last_lr: float = 0.0
    train_steps: int = 0  # valid (non-padding) time steps trained on
    train_s: float = 0.0  # time in training updates (evaluations and checkpoints excluded)
    wall_s: float = 0.0  # whole run, summed over sessions
    sessions: int = 0


class StopFlag:
    """SIGTERM (SLURM preemption), SIGINT (Ctrl-C) or SIGUSR1 ask the loop to checkpoint and exit.

    A second SIGINT interrupts at once (KeyboardInterrupt); nothing is lost but the current update.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopFlag":
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def __bool__(self) -> bool:
        return self.signum is not None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_update(model, optimizer, batches, n_micro: int, lr: float, grad_clip: float, device, dtype) -> dict:
    """One optimizer update over `n_micro` micro-batches drawn from the iterator `batches`.

    The loss of each micro-batch is its masked mean CE; the gradient is their average. The update
    is skipped (finite=False) when a loss or the gradient norm is NaN/Inf. One host sync per update.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses, steps = [], 0
    for _ in range(n_micro):
        batch = next(batches)
        steps += int(batch.mask.sum())  # counted on the host copy: no sync
        batch = batch.to(device, non_blocking=True)
        with runio.autocast(device, dtype):
            logits = model(batch.data)
        loss = masked_cross_entropy(logits, batch.labels, batch.mask)
        (loss / n_micro).backward()
        losses.append(loss.detach())
    acc = element_accuracy(logits.detach(), batch.labels, batch.element)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    values = torch.stack([*losses, acc, grad_norm.float()]).tolist()
    finite = all(math.isfinite(v) for v in values)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    bad_loss = not all(math.isfinite(v) for v in values[:n_micro])
    return {
        "loss": sum(values[:n_micro]) / n_micro, "acc": values[-2], "grad_norm": values[-1], "steps": steps,
        "finite": finite, "diverged_on": None if finite else ("loss" if bad_loss else "grad_norm"),
    }


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The model with each mixer through torch.compile (static shapes), the rest eager; it shares
    the model's modules and parameters, so `model.train()`/`eval()` and the optimizer still act on it.

    Per mixer, not the whole model: the layers are one class at one shape, so all of them run one
    compiled graph (measured on CPU, 8 layers, d 64, T 128: GLA compiles in 51 s instead of 163 s)
    and the wrapper's dropout stays eager, drawing the same random numbers as an eager run (a
    mixer's own dropout, the Transformer's FFN, is compiled and draws others). Static
    shapes: with the time axis dynamic, inductor fails on the kernels' chunk padding
    (bench/results/gpu.md), so each padded batch length (and train/eval mode) compiles once; the
    cache limit is raised to hold them all (Task 2 at bucket 256: 9 lengths)."""
    import copy

    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    view = copy.copy(model)
    view._modules = dict(model._modules)  # its own module table: replacing `mixers` leaves the model alone
    view.mixers = torch.nn.ModuleList(torch.compile(m, dynamic=False) for m in model.mixers)
    return view


def _probe_step(model, micro: int, max_len: int, vocab: int, device, dtype) -> None:
    """One forward+backward of `micro` samples at the longest sequence (raises on out-of-memory).

    Adam's two moments do not exist yet: an equal amount of memory is held during the probe. The
    dropout RNG is restored afterwards, so probing does not change the run.
    """
    rng = torch.cuda.get_rng_state(device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    reserve = x = labels = mask = logits = element = None
    try:
        reserve = torch.empty(2 * param_bytes, dtype=torch.uint8, device=device)
        x = torch.zeros(micro, max_len, vocab, device=device)
        labels = torch.zeros(micro, max_len, dtype=torch.long, device=device)
        mask = torch.ones(micro, max_len, device=device)
        with runio.autocast(device, dtype):
            logits = model(x)
        element = torch.arange(max_len, device=device).mul(200).div(max_len, rounding_mode="floor").expand(micro, -1)
        element_accuracy(logits.detach(), labels, element)
        masked_cross_entropy(logits, labels, mask).backward()
        torch.cuda.synchronize(device)
    finally:
        reserve = x = labels = mask = logits = element = None
        model.zero_grad(set_to_none=True)
        torch.cuda.set_rng_state(rng, device)


def step_fits(model, micro: int, max_len: int, vocab: int, device, dtype) -> bool:
    """Whether a training step of `micro` samples at the longest sequence fits in CUDA memory."""
    try:
        _probe_step(model, micro, max_len, vocab, device, dtype)
        fits = True
    except RuntimeError as err:
        if not runio.is_oom(err):
            raise
        fits = False
    torch.cuda.empty_cache()  # here, not in the except block: the error's traceback holds the step's tensors
    return fits


def probe_micro_batch(model, batch_size: int, max_len: int, vocab: int, device, dtype) -> int:
    """Largest divisor of batch_size whose forward+backward at the longest sequence fits (CUDA)."""
    micro = batch_size
    while micro > 1 and not step_fits(model, micro, max_len, vocab, device, dtype):
        micro = max(d for d in range(1, micro) if batch_size % d == 0 and d <= micro // 2)
    if micro == 1:
        _probe_step(model, 1, max_len, vocab, device, dtype)  # one sample must fit: raise its error if not
        torch.cuda.empty_cache()
    return micro


class Run:
    """One training run in one run directory."""

    def __init__(self, cfg: C.RunConfig, dataset_dir: str | Path, out_dir: str | Path):
        self.cfg, self.dataset_dir, self.out = cfg, Path(dataset_dir), Path(out_dir)
        runio.check_arch(cfg)
        self.dataset = runio.open_dataset(self.dataset_dir)
        self.identity = runio.dataset_identity(self.dataset, self.dataset_dir)
        n_train, n_test = len(self.dataset.train), len(self.dataset.test)
        self.dataset_size = cfg.dataset_size or n_train
        if self.dataset_size > n_train:
            raise C.ConfigError(f"config key 'dataset_size' ({self.dataset_size}) exceeds the dataset's {n_train} training samples")
        self.total_updates = self.dataset_size // cfg.batch_size  # length of the schedule (3125)
        if self.total_updates < 1:
            raise C.ConfigError(f"config key 'dataset_size' ({self.dataset_size}) is smaller than batch_size ({cfg.batch_size})")
        self.stop_at = min(self.total_updates, cfg.max_updates or self.total_updates)
        self.n_test = cfg.test_size or n_test
        if self.n_test > n_test:
            raise C.ConfigError(f"config key 'test_size' ({self.n_test}) exceeds the dataset's {n_test} test samples")
        # validation = the training stream right after the trained samples (absolute sample indices)
        first = self.dataset.meta["train_indices"][0] + self.dataset_size
        self.val_indices = [first, first + cfg.val_size]
        a, b = self.dataset.meta["test_indices"]
        if cfg.val_size and a < self.val_indices[1] and first < b:
            raise C.ConfigError(
                f"config key 'val_size': validation samples {self.val_indices} overlap the dataset's {self.dataset.meta['test_split']} "
                f"test samples [{a}, {b}); materialize it with --size >= dataset_size + val_size ({self.dataset_size + cfg.val_size})")
        self.spec = cfg.input_spec()
        self.device = runio.pick_device(cfg)
        self.dtype = runio.pick_dtype(cfg, self.device)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.saved_at: int | None = None  # update of the checkpoint on disk written by this session

    # --- run directory ---------------------------------------------------------------------

    def previous_result(self) -> dict | None:
        """metrics.json of a finished run with this config (None if none); another config is refused."""
        path = self.out / "metrics.json"
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())
        stored = C.load_yaml(self.out / "config.yaml") if (self.out / "config.yaml").is_file() else {}
        diff = C.differing_keys(stored, self.cfg)
        if diff:
            raise C.ConfigError(f"{self.out} holds a finished run of another config; differing keys: {'; '.join(diff)}")
        return metrics

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.is_file():
            return None
        ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        diff = C.differing_keys(ckpt["config"], self.cfg)
        if diff:
            raise C.ConfigError(
                f"checkpoint {self.checkpoint_path} was written for another config; differing keys: {'; '.join(diff)} "
                "(use another --out, or delete the run directory to start over)"
            )
        mismatch = runio.identity_mismatch(ckpt["dataset"], self.identity)
        if mismatch:
            raise C.ConfigError(f"checkpoint {self.checkpoint_path} was written for another dataset: {'; '.join(mismatch)}")
        if ckpt.get("optimizer") is None:
            raise C.ConfigError(f"checkpoint {self.checkpoint_path} holds weights only (final_checkpoint=model) and cannot be resumed")
        return ckpt

    def save_checkpoint(self, model, optimizer, progress: Progress, full: bool = True) -> None:
        runio.atomic_torch_save(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "config_hash": self.cfg.hash(),
            "dataset": self.identity,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if full else None,
            "model_training": model.training,
            "progress": asdict(progress),
            "rng": rng_state(),
        })
        self.saved_at = progress.update
        log.info("checkpoint written at update %d", progress.update)

    def write_evals(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EVAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        runio.atomic_write_text(self.out / "evals.csv", buf.getvalue())

    # --- training ----------------------------------------------------------------------------

    def train_batches(self, first_update: int, micro: int):
        """Micro-batches from update `first_update` on, in index order (no shuffling, §11)."""
        train, grammar, spec, cfg, cuda = self.dataset.train, self.dataset.grammar, self.spec, self.cfg, self.device.type == "cuda"

        bucket = cfg.length_bucket if cfg.compile == "true" else 1

        def make(start):
            batch = make_batch(train[start : start + micro], np.arange(start, start + micro), grammar, spec, "train", cfg.seed, 0)
            batch = batch.pad_to_multiple(bucket)
            return batch.pin_memory() if cuda else batch

        starts = range(first_update * cfg.batch_size, self.stop_at * cfg.batch_size, micro)
        return prefetched(make, starts)

    def evaluate(self, model, progress: Progress) -> dict:
        cfg = self.cfg
        result = run_test(
            model, self.dataset.test[: self.n_test], self.dataset.grammar, self.spec, cfg.seed,
            len(progress.evals), cfg.test_bs, self.device, self.dtype,
        )
        if not cfg.dropout_quirk:
            model.train()
        else:
            model.eval()  # §15.3: the reference never switches back to train mode
        n = max(1, progress.window_n)
        row = {
            "eval": len(progress.evals) + 1, "update": progress.update, "samples": progress.update * cfg.batch_size,
            "lr": progress.last_lr, "train_loss": progress.window_loss / n, "train_acc": progress.window_acc / n,
            "test_loss": result["test_loss"], "test_acc": result["test_acc"], "wall_s": round(progress.wall_s, 3),
        }
        progress.evals.append(row)
        progress.window_loss = progress.window_acc = 0.0
        progress.window_n = 0
        log.info(
            "eval %d | update %d | samples %d | lr %.3g | train loss %.4f acc %.4f | test loss %.4f acc %.4f",
            row["eval"], row["update"], row["samples"], row["lr"], row["train_loss"], row["train_acc"],
            row["test_loss"], row["test_acc"],
        )
        self.write_evals(progress.evals)
        return row

    def val_classes(self) -> np.ndarray:
        """Class ids of the validation samples: from classes.npy where materialized, the rest
        sampled by index range with the dataset's own sampler (bit-exact, §4)."""
        from selectivbench.sampling import default_workers, sample_classes

        train, (first, stop) = self.dataset.train, self.val_indices
        offset = self.dataset.meta["train_indices"][0]
        have = np.asarray(train[first - offset : stop - offset])
        if len(have) == stop - first:
            return have
        log.info("validation samples %d..%d are not in %s: sampling them", first + len(have), stop - 1, self.dataset_dir / "classes.npy")
        extra = sample_classes(self.dataset.grammar, self.dataset.meta["config"]["seed"], first + len(have), stop, workers=default_workers())
        return np.concatenate([have, extra])

    def validate(self, model, progress: Progress, status: str) -> dict:
        """val_acc/val_loss at the end of the run (once: a pass per evaluation would add ~10 % to a
        GPU run), under the test condition. A diverged run is validated on its last checkpoint,
        the state its headline (last evaluation) comes from; none -> no validation."""
        if not self.cfg.val_size:
            return {}
        update = progress.update
        if status == "diverged":
            if not self.checkpoint_path.is_file():
                return {"val_size": self.cfg.val_size, "val_indices": self.val_indices, "val_acc": None, "val_loss": None, "val_update": None}
            ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
            model.load_state_dict(ckpt["model"])
            update = ckpt["progress"]["update"]
        result = run_test(model, self.val_classes(), self.dataset.grammar, self.spec, self.cfg.seed, 0, self.cfg.test_bs,
                          self.device, self.dtype, first_index=self.val_indices[0])
        log.info("validation (samples %d..%d, update %d): loss %.4f acc %.4f", self.val_indices[0], self.val_indices[1] - 1,
                 update, result["test_loss"], result["test_acc"])
        return {"val_size": self.cfg.val_size, "val_indices": self.val_indices, "val_acc": result["test_acc"],
                "val_loss": result["test_loss"], "val_update": update}

    def metrics(self, model, progress: Progress, status: str, diverged: dict | None) -> dict:
        evals = progress.evals
        final = evals[-1] if evals else {}
        best = max(evals, key=lambda r: r["test_acc"]) if evals else {}
        try:
            state = model.state_size_per_layer()
        except NotImplementedError:
            state = None
        return {
            "status": status,
            "final_test_acc": final.get("test_acc"), "final_test_loss": final.get("test_loss"),
            "final_eval_update": final.get("update"),
            "best_test_acc": best.get("test_acc"), "best_test_acc_update": best.get("update"),
            "best_test_loss": min((r["test_loss"] for r in evals), default=None),
            "evaluations": len(evals), "updates": progress.update, "samples": progress.update * self.cfg.batch_size,
            "total_updates": self.total_updates,
            "diverged_at_update": diverged and diverged["update"], "diverged_on": diverged and diverged["on"],
            "num_parameters": model.num_parameters(), "width": model.width, "n_head": model.n_head,
            "state_size_per_layer": state, "state_size": state * self.cfg.layers if state is not None else None,
            "micro_batch": progress.micro_batch, "grad_accum": self.cfg.batch_size // progress.micro_batch,
            "recompute": progress.recompute, "compile": self.cfg.compile == "true",
            "wall_s": progress.wall_s, "train_s": progress.train_s,
            "updates_per_s": progress.update / progress.train_s if progress.train_s else None,
            "tokens_per_s": progress.train_steps / progress.train_s if progress.train_s else None,
            "device": runio.describe_device(self.device), "precision": str(self.dtype).replace("torch.", ""),
            "peak_memory_bytes": runio.peak_memory_bytes(self.device), "sessions": progress.sessions,
            "config_hash": self.cfg.hash(), "dataset": self.identity,
        }

    def run(self, stop: StopFlag) -> str:
        """Train (or resume) to the end; returns completed, diverged, interrupted or finished-before."""
        cfg = self.cfg
        previous = self.previous_result()
        if previous is not None:
            log.info("%s already finished (%s); nothing to do", self.out, previous.get("status"))
            return "finished-before"
        ckpt = self.load_checkpoint()
        runio.atomic_write_text(self.out / "config.yaml", C.to_yaml(cfg, {"dataset": self.identity}))
        if self.dataset.grammar.seed != cfg.seed:
            log.warning("run seed %d differs from the grammar seed %d (the reference ties them, §4)", cfg.seed, self.dataset.grammar.seed)

        seed_everything(cfg.seed)
        model = runio.build_model(cfg, self.dataset.grammar).to(self.device)
        fused = self.device.type == "cuda"
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0, fused=fused or None)
        if ckpt is None:
            progress = Progress()
            model.train()
            progress.micro_batch, progress.recompute = self.memory_plan(model)
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            progress = Progress(**ckpt["progress"])
            model.train(ckpt["model_training"])
            restore_rng(ckpt["rng"])
            if cfg.recompute != "auto":  # operational: a resumed run may switch it (same result)
                progress.recompute = cfg.recompute == "true"
            log.info("resuming at update %d (%d evaluations done)", progress.update, len(progress.evals))
            del ckpt
        model.recompute = progress.recompute
        progress.sessions += 1
        self.write_evals(progress.evals)
        n_micro = cfg.batch_size // progress.micro_batch
        log.info(
            "%s %s feat %d: %d parameters | %d updates (schedule %d) | micro-batch %d x %d | recompute %s | compile %s | %s %s",
            cfg.task, cfg.arch, cfg.feat_size, model.num_parameters(), self.stop_at, self.total_updates,
            progress.micro_batch, n_micro, "on" if progress.recompute else "off",
            f"on (lengths padded to multiples of {cfg.length_bucket})" if cfg.compile == "true" else "off", runio.describe_device(self.device),
            str(self.dtype).replace("torch.", ""),
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        session_start, wall_before = time.perf_counter(), progress.wall_s
        show = cfg.progress == "on" or (cfg.progress == "auto" and sys.stderr.isatty())
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.stop_at * cfg.batch_size, initial=progress.update * cfg.batch_size, unit="sample",
            disable=not show, dynamic_ncols=True, file=sys.stderr,
        )
        batches = self.train_batches(progress.update, progress.micro_batch)
        step_model = compiled(model) if cfg.compile == "true" else model  # shares the parameters
        status, diverged = "completed", None
        try:
            while progress.update < self.stop_at:
                lr = cfg.lr * lr_factor(progress.update, cfg.warmup, self.total_updates)
                t0 = time.perf_counter()
                out = train_update(step_model, optimizer, batches, n_micro, lr, cfg.grad_clip, self.device, self.dtype)
                if not out["finite"]:
                    status, diverged = "diverged", {"update": progress.update + 1, "on": out["diverged_on"]}
                    log.warning("non-finite %s at update %d: run diverged", out["diverged_on"], progress.update + 1)
                    break
                progress.train_s += time.perf_counter() - t0
                progress.update += 1
                progress.last_lr = lr
                progress.train_steps += out["steps"]
                progress.window_loss += out["loss"]
                progress.window_acc += out["acc"]
                progress.window_n += 1
                progress.wall_s = wall_before + time.perf_counter() - session_start
                bar.update(cfg.batch_size)
                bar.set_postfix(loss=f"{out['loss']:.3f}", acc=f"{out['acc']:.3f}", refresh=False)

                evaluated = progress.update % cfg.eval_every == 0
                if evaluated:
                    self.evaluate(model, progress)
                if evaluated or (cfg.checkpoint_every and progress.update % cfg.checkpoint_every == 0) or stop:
                    progress.wall_s = wall_before + time.perf_counter() - session_start
                    self.save_checkpoint(model, optimizer, progress)
                if stop and progress.update < self.stop_at:
                    log.warning("signal %d: stopped at update %d; run the same command again to resume", stop.signum, progress.update)
                    return "interrupted"
        finally:
            batches.close()
            bar.close()

        if status == "completed" and not progress.evals:
            log.info("no evaluation was due (%d updates < eval_every %d): evaluating the final model", progress.update, cfg.eval_every)
            self.evaluate(model, progress)
        progress.wall_s = wall_before + time.perf_counter() - session_start
        if status == "completed" and (cfg.final_checkpoint == "model" or self.saved_at != progress.update):
            self.save_checkpoint(model, optimizer, progress, full=cfg.final_checkpoint == "full")
        val = self.validate(model, progress, status)
        metrics = {**self.metrics(model, progress, status, diverged), **val}
        runio.atomic_write_json(self.out / "metrics.json", metrics)
        log.info(
            "%s: final test acc %s (best %s) after %d updates, %.1f s",
            status, metrics["final_test_acc"], metrics["best_test_acc"], progress.update, progress.wall_s,
        )
        return status

    def memory_plan(self, model) -> tuple[int, bool]:
        """(micro-batch, recompute) of a new run. CPU: the configured values, auto recompute = off.
        CUDA with recompute auto: off if the micro-batch (configured, else the whole batch) fits
        without it, else on; then, unless configured, the micro-batch is probed (largest divisor of
        the batch that fits). Recomputation (one more forward) thus comes before gradient accumulation."""
        cfg = self.cfg
        recompute = {"true": True, "false": False}.get(cfg.recompute)
        if self.device.type != "cuda":
            return cfg.micro_batch or cfg.batch_size, bool(recompute)
        max_len, vocab = self.spec.max_length("train"), self.dataset.grammar.vocab
        micro = cfg.micro_batch or cfg.batch_size
        fitted = False
        if recompute is None:
            model.recompute = False
            fitted = step_fits(model, micro, max_len, vocab, self.device, self.dtype)
            recompute = not fitted
        model.recompute = recompute
        if cfg.micro_batch is None and not fitted:
            micro = probe_micro_batch(model, cfg.batch_size, max_len, vocab, self.device, self.dtype)
        log.info("memory plan: micro-batch %d, recompute %s (sequences up to %d steps)", micro, "on" if recompute else "off", max_len)
        return micro, recompute


def train(cfg: C.RunConfig, dataset_dir: str | Path, out_dir: str | Path) -> str:
    """Run (or resume) one training run; logs to RUN_DIR/train.log and stderr. Returns the status."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise C.ConfigError(f"another process is training in {out} (it holds {out / '.lock'})") from None
    for tmp in out.glob("*.tmp"):  # left by a kill during an atomic write
        tmp.unlink()
    handlers = [logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with StopFlag() as stop:
            return Run(cfg, dataset_dir, out).run(stop)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        lock.close()  # releases the flock


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selectivbench train", description=__doc__, epilog=C.describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="dataset directory of `selectivbench dataset`")
    p.add_argument("--out", required=True, help="run directory (created; an existing one is resumed)")
    p.add_argument("--config", help="YAML file of config keys (a run's config.yaml works too)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    return p


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = C.load_yaml(args.config) if args.config else {}
        overrides.update(C.parse_sets(args.set))
        cfg = C.resolve(overrides)
        status = train(cfg, args.dataset, args.out)
    except C.ConfigError as err:
        print(f"selectivbench train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_INTERRUPTED if status == "interrupted" else EXIT_OK
