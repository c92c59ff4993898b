"""Hyper-parameter selection: per (task, arch, size[, amb, test gap, test split]) pick (lr, warmup).

Two rules, side by side:
* `val`: the best mean *validation* accuracy over seeds (a split disjoint from train and test);
  the test accuracy of that setting is reported as mean ± CI over seeds. When the runs have no
  `val_acc`, this rule falls back to the authors' rule and says so in `selected_by`.
* `authors`: the best mean final *test* accuracy over seeds (selection on the test set, as the
  reference sweep's maximised metric; spec §11, §15.12).

Failed runs have no accuracy: they are left out of the means but counted (`n_failed`); diverged
runs count with the accuracy of their last evaluation (as in the reference) and are counted
(`n_diverged`). Figures mark groups where either count is non-zero.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

GROUP_COLUMNS = ["task", "arch", "feat", "amb", "test_split", "test_gap"]
SETTING_COLUMNS = ["lr", "warmup"]
VAL_RULE, FALLBACK_RULE, AUTHORS_RULE = "val_acc", "test_acc (no val_acc: authors' rule)", "test_acc"


@functools.lru_cache(maxsize=None)  # ~0.1 s per call; the claims table asks for the same few many times
def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (bisection on a Simpson-integrated CDF)."""
    if df < 1:
        return math.nan
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float) -> float:  # for t >= 0
        x = np.linspace(0.0, t, 4001)
        y = c * (1 + x * x / df) ** (-(df + 1) / 2)
        h = x[1] - x[0]
        return 0.5 + h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t confidence interval, n) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = t_quantile(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def setting_summary(runs: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """One row per (group, lr, warmup): accuracies over seeds and status counts."""
    keys = GROUP_COLUMNS + SETTING_COLUMNS
    rows = []
    for key, g in runs.groupby(keys, dropna=False, sort=True):
        test_mean, test_ci, n_ok = mean_ci(g["test_acc"], confidence)
        val_mean, _, n_val = mean_ci(g["val_acc"], confidence)
        status = g["status"].fillna("missing")
        rows.append({
            **dict(zip(keys, key)),
            "test_mean": test_mean, "test_ci": test_ci, "val_mean": val_mean,
            "n_seeds": len(g), "n_ok": n_ok, "n_val": n_val,
            "n_diverged": int((status == "diverged").sum()),
            "n_failed": int(status.isin(["failed", "missing", "unknown"]).sum()),
            "n_skipped": int((status == "skipped").sum()),
            "num_parameters": g["num_parameters"].dropna().iloc[0] if g["num_parameters"].notna().any() else pd.NA,
        })
    return pd.DataFrame(rows)


def _best(settings: pd.DataFrame, column: str) -> pd.Series | None:
    ok = settings[settings[column].notna()]
    if ok.empty:
        return None
    # ties -> the smaller lr, then the smaller warmup (settings are sorted by lr, warmup)
    return ok.loc[ok[column].idxmax()]


def select(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The selection table: one row per group, the validation rule and the authors' rule."""
    settings = setting_summary(runs, confidence)
    rows = []
    for key, g in settings.groupby(GROUP_COLUMNS, dropna=False, sort=True):
        row = dict(zip(GROUP_COLUMNS, key))
        row["n_settings"] = len(g)
        authors = _best(g, "test_mean")
        by_val = _best(g, "val_mean") if (g["n_val"] == g["n_ok"]).all() and g["n_val"].gt(0).any() else None
        chosen, rule = (by_val, VAL_RULE) if by_val is not None else (authors, FALLBACK_RULE)
        if chosen is None:  # nothing finished: all skipped or failed
            chosen = g.iloc[0]
            rule = "skipped" if (g["n_skipped"] == g["n_seeds"]).all() else "none (no finished run)"
        row.update(
            selected_by=rule, lr=chosen["lr"], warmup=chosen["warmup"],
            test_mean=chosen["test_mean"], test_ci=chosen["test_ci"], val_mean=chosen["val_mean"],
            n_seeds=chosen["n_seeds"], n_ok=chosen["n_ok"],
            num_parameters=g["num_parameters"].dropna().iloc[0] if g["num_parameters"].notna().any() else pd.NA,
            # problems anywhere in the group's grid, not only in the chosen setting
            n_diverged=int(g["n_diverged"].sum()), n_failed=int(g["n_failed"].sum()), n_runs=int(g["n_seeds"].sum()),
        )
        if authors is not None:
            row.update(lr_authors=authors["lr"], warmup_authors=authors["warmup"],
                       test_mean_authors=authors["test_mean"], test_ci_authors=authors["test_ci"])
        rows.append(row)
    columns = GROUP_COLUMNS + [
        "num_parameters", "selected_by", "lr", "warmup", "test_mean", "test_ci", "val_mean", "n_seeds", "n_ok",
        "lr_authors", "warmup_authors", "test_mean_authors", "test_ci_authors", "n_settings", "n_runs",
        "n_diverged", "n_failed",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)
