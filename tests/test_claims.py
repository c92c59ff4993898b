"""The claims table (analysis/claims.py): verdict rule and claim assembly on synthetic rows."""

import math

import pandas as pd
import pytest

from selectivbench.analysis import claims as C
from selectivbench.analysis.aggregate import COLUMNS

ARCHS = ["mamba", "mamba2", "gla", "delta_net", "gated_delta_net", "gated_delta_product", "transformer"]


# --- the rule on one comparison ----------------------------------------------------------------


@pytest.mark.parametrize(
    "diffs, expected, verdict",
    [
        ([0.10, 0.12, 0.11], "greater", C.REPRODUCED),  # CI well above 0
        ([-0.10, -0.12, -0.11], "greater", C.NOT_REPRODUCED),  # CI well below 0
        ([0.10, -0.08, 0.02], "greater", C.INCONCLUSIVE),  # CI straddles 0
        ([0.30], "greater", C.INCONCLUSIVE),  # one seed: no interval
        ([], "greater", C.INCONCLUSIVE),
        ([-0.010, -0.012, -0.011], "not_worse", C.REPRODUCED),  # slightly worse, within the 0.02 margin
        ([-0.10, -0.12, -0.11], "not_worse", C.NOT_REPRODUCED),  # worse beyond the margin
        ([-0.02, 0.04, -0.09], "not_worse", C.INCONCLUSIVE),
    ],
)
def test_pair_verdict(diffs, expected, verdict):
    out = C.pair_verdict(diffs, expected)
    assert out["verdict"] == verdict
    assert out["n_seeds"] == len(diffs)
    if len(diffs) >= 2:
        assert out["ci_lo"] < out["diff"] < out["ci_hi"]


def test_pair_verdict_interval_is_student_t():
    # two seeds: t(0.975, 1) = 12.706, half-width = 12.706 * sd / sqrt(2)
    out = C.pair_verdict([0.1, 0.2], "greater")
    half = 12.7062 * math.sqrt(0.005) / math.sqrt(2)
    assert out["diff"] == pytest.approx(0.15)
    assert out["ci_hi"] - out["diff"] == pytest.approx(half, rel=1e-3)
    assert out["verdict"] == C.INCONCLUSIVE  # 0.15 ± 0.64


def test_combine():
    R, N, I = C.REPRODUCED, C.NOT_REPRODUCED, C.INCONCLUSIVE
    assert C.combine([R, R])[0] == R
    assert C.combine([N, I])[0] == N
    verdict, note = C.combine([R, N, I])
    assert verdict == I and "mixed" in note and "1 of 3" in note
    assert C.combine([R, I])[0] == I
    assert C.combine([])[0] == I


# --- whole claims on a synthetic results table ---------------------------------------------------


def rows(acc: dict, seeds=(1, 2, 3), samples=None, split="faithful", noise=0.004, shared=0.0) -> list[dict]:
    """Result rows: acc[task][arch] = mean test accuracy (Task 4 as {gap: acc}). Per seed, a jitter
    of its own to each architecture (± noise) plus one shared by all (the seed's grammar: ± shared)."""
    out = []
    for task, by_arch in acc.items():
        for k, (arch, value) in enumerate(by_arch.items()):
            for i, seed in enumerate(seeds):
                jitter = noise * (-1) ** k * (i - 1) + shared * (i - 1)
                base = dict(feat=256, amb=20, lr=1e-3, warmup=32, seed=seed, status="completed")
                n = (samples or {}).get(arch, 20000)
                if task == "task4":
                    for gap, a in value.items():
                        out.append(dict(base, kind="evaluate", task="task4", arch=arch, test_split=split, test_gap=float(gap),
                                        test_acc=a + jitter))
                else:
                    out.append(dict(base, kind="train" if split == "faithful" else "evaluate", task=task, arch=arch,
                                    test_split=split, test_gap=math.nan, test_acc=value + jitter, samples=n))
    return out


def table(*parts) -> pd.DataFrame:
    df = pd.DataFrame([r for p in parts for r in p]).reindex(columns=COLUMNS)
    for col in ("test_acc", "val_acc", "test_gap", "lr"):
        df[col] = df[col].astype(float)
    return df


PAPER_LIKE = {  # every claim of the abstract holds by a wide margin
    "task1": dict(mamba=0.5, mamba2=0.6, gla=0.55, delta_net=0.4, gated_delta_net=0.62, gated_delta_product=0.64, transformer=0.8),
    "task2": dict(mamba=0.4, mamba2=0.55, gla=0.5, delta_net=0.3, gated_delta_net=0.55, gated_delta_product=0.56, transformer=0.7),
    "task3": dict(mamba=0.4, mamba2=0.6, gla=0.5, delta_net=0.3, gated_delta_net=0.6, gated_delta_product=0.6, transformer=0.75),
    "task4": {a: {1: 0.5, 10: v} for a, v in
              dict(mamba=0.1, mamba2=0.1, gla=0.1, delta_net=0.3, gated_delta_net=0.4, gated_delta_product=0.45, transformer=0.6).items()},
}


def claim_verdicts(df: pd.DataFrame) -> dict:
    out = C.judge(df)
    return dict(zip(out[out["level"] == "claim"]["claim"], out[out["level"] == "claim"]["verdict"]))


def test_claims_reproduced_when_the_data_say_so():
    verdicts = claim_verdicts(table(rows(PAPER_LIKE)))
    assert verdicts == {"a": C.REPRODUCED, "b-selectivity": C.REPRODUCED, "b-generalisation": C.REPRODUCED, "c": C.REPRODUCED}


def test_claims_contradicted():
    acc = {t: dict(v) for t, v in PAPER_LIKE.items()}
    acc["task2"] = {**acc["task2"], "gated_delta_net": 0.2, "mamba2": 0.2, "gla": 0.2, "transformer": 0.1}  # ungated delta_net 0.3 best-ish
    acc["task3"] = {**acc["task3"], "gated_delta_net": 0.2, "mamba2": 0.2, "gla": 0.2, "transformer": 0.1}
    acc["task1"] = {**acc["task1"], "gated_delta_net": 0.2, "mamba2": 0.2, "gla": 0.2, "transformer": 0.1}
    acc["task4"] = {**acc["task4"], "mamba2": {1: 0.5, 10: 0.5}, "transformer": {1: 0.5, 10: 0.05}}  # no-mixing generalises best
    out = C.judge(table(rows(acc)))
    verdicts = dict(zip(out[out["level"] == "claim"]["claim"], out[out["level"] == "claim"]["verdict"]))
    assert verdicts["a"] == C.NOT_REPRODUCED
    assert verdicts["b-generalisation"] == C.NOT_REPRODUCED
    assert verdicts["c"] == C.NOT_REPRODUCED
    # Mamba-2 = Gated DeltaNet on Tasks 2-3: not worse, so (b, selectivity) still holds
    assert verdicts["b-selectivity"] == C.REPRODUCED
    # the Task-4 comparisons are made at the longest gap only
    t4 = out[(out["level"] == "comparison") & (out["task"] == "task4")]
    assert set(t4["condition"]) == {"feat 256, amb 20, test gap 10"}


def test_noise_makes_claims_inconclusive_and_seeds_are_paired():
    # per-architecture seed spread far larger than the differences -> inconclusive
    assert set(claim_verdicts(table(rows(PAPER_LIKE, noise=0.5))).values()) == {C.INCONCLUSIVE}
    # a large seed effect shared by all architectures (the grammar) cancels in the paired differences
    assert set(claim_verdicts(table(rows(PAPER_LIKE, shared=0.3))).values()) == {C.REPRODUCED}
    # two seeds only: t(1) = 12.7 makes every interval wide
    two = claim_verdicts(table(rows(PAPER_LIKE, seeds=(1, 2), noise=0.03)))
    assert set(two.values()) == {C.INCONCLUSIVE}


def test_reduced_architecture_is_not_comparable():
    out = C.judge(table(rows(PAPER_LIKE, samples={"mamba": 3200})))
    cmp = out[(out["level"] == "comparison") & (out["claim"] == "c") & (out["comparison"] == "transformer vs mamba")]
    assert list(cmp["task"]) == ["task1", "task2", "task3", "task4"]  # Task 4 inherits its run's samples
    assert (cmp["verdict"] == C.INCONCLUSIVE).all()
    assert cmp["note"].str.contains("3200").all()
    # the claim (c) stays inconclusive although every other comparison is reproduced
    assert claim_verdicts(table(rows(PAPER_LIKE, samples={"mamba": 3200})))["c"] == C.INCONCLUSIVE


def test_missing_runs_and_failed_runs():
    df = table(rows(PAPER_LIKE))
    df.loc[(df["arch"] == "delta_net") & (df["task"] != "task4"), "status"] = "failed"
    df.loc[(df["arch"] == "delta_net") & (df["task"] != "task4"), "test_acc"] = math.nan
    out = C.judge(df)
    a = out[(out["level"] == "comparison") & (out["claim"] == "a")]
    assert (a["verdict"] == C.INCONCLUSIVE).all() and (a["n_seeds"] == 0).all()
    assert claim_verdicts(df)["a"] == C.INCONCLUSIVE


def test_rankings_and_split_difference():
    faithful = rows(PAPER_LIKE)
    heldout = rows({t: {a: (v - 0.05 if not isinstance(v, dict) else {g: x - 0.05 for g, x in v.items()}) for a, v in by.items()}
                    for t, by in PAPER_LIKE.items()}, split="heldout")
    out = C.judge(table(faithful, heldout))
    rank = out[(out["level"] == "ranking") & (out["task"] == "task2")].iloc[0]
    assert rank["measured"].startswith("transformer 0.700")
    assert rank["verdict"].endswith("of 21 orders resolved")
    split = out[out["level"] == "split"].set_index("task")
    assert set(split.index) == {"task1", "task2", "task3", "task4"}
    assert split.loc["task2", "diff"] == pytest.approx(0.05)
    assert split.loc["task2", "verdict"] == "faithful higher"
    # claims are judged on the first (training) split only
    assert claim_verdicts(table(faithful, heldout))["c"] == C.REPRODUCED


def test_without_heldout_the_split_row_says_so(tmp_path):
    df = table(rows(PAPER_LIKE))
    out = C.write_claims(df, tmp_path / "c.csv", tmp_path / "c.md", tmp_path / "c.html")
    split = out[out["level"] == "split"]
    assert list(split["verdict"]) == ["not measured"]
    md = (tmp_path / "c.md").read_text()
    assert "## Claims" in md and "softmax attention stays best" in md and "reproduced" in md
    assert pd.read_csv(tmp_path / "c.csv")["level"].tolist() == out["level"].tolist()
