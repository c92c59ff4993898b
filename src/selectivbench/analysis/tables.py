"""The paper's tables: taxonomy (spec §12), parameter counts (§10.4), grammars, and a Markdown writer."""

from __future__ import annotations

import json
import math

import pandas as pd

# Spec §12 (a reconstruction: the paper's table could not be read; verify against the PDF).
TAXONOMY_COLUMNS = ["arch", "model", "A_t", "B_t", "C_t", "data-dependent gating", "complementary gating",
                    "fast forgetting", "in-state channel mixing"]
TAXONOMY = [
    ("mamba", "Mamba (S6)", "diag(exp(Δ_t ⊙ a)), per channel & state dim", "Δ_t · b_t x_tᵀ", "c_t", "yes", "yes (via Δ_t)", "yes", "no"),
    ("mamba2", "Mamba2 (SSD)", "exp(Δ_t·a)·I, scalar per head", "Δ_t · b_t x_tᵀ", "c_t", "yes", "yes (via Δ_t)", "yes", "no"),
    ("gla", "GLA", "diag(α_t), α_t = σ(W x_t)^{1/16}, per key dim", "k_t v_tᵀ", "q_t", "yes", "no", "limited (α near 1)", "no"),
    ("delta_net", "DeltaNet", "I − β_t k_t k_tᵀ", "β_t k_t v_tᵀ", "q_t", "yes (via β_t, k_t)", "yes (β_t erases and writes)", "no decay gate", "yes"),
    ("gated_delta_net", "Gated DeltaNet", "α_t (I − β_t k_t k_tᵀ), α_t scalar per head", "β_t k_t v_tᵀ", "q_t", "yes", "yes", "yes", "yes"),
    ("gated_delta_product", "Gated DeltaProduct", "α_t ∏_{j=1..4}(I − β_{t,j} k_{t,j} k_{t,j}ᵀ), β ∈ (0,2)", "sum of the 4 delta writes", "q_t", "yes", "yes", "yes", "yes (rank ≤ 4 per step, negative eigenvalues)"),
    ("transformer", "Transformer (softmax attention)", "— (KV cache grows with length)", "append (k_t, v_t)", "softmax(q_t Kᵀ) V", "n/a", "n/a", "n/a", "n/a"),
]


def taxonomy_table(architectures: list[str], summaries: dict[str, str] | None = None) -> pd.DataFrame:
    """§12 rows of the configured architectures; one not in §12 gets its registry summary."""
    known = {row[0]: row for row in TAXONOMY}
    rows = []
    for arch in architectures:
        if arch in known:
            rows.append(known[arch])
        else:
            note = (summaries or {}).get(arch) or "not classified"
            rows.append((arch, note, *["—"] * (len(TAXONOMY_COLUMNS) - 2)))
    return pd.DataFrame(rows, columns=TAXONOMY_COLUMNS)


def parameter_counts(architectures: list[str], feats: list[int], amb: int, d_state_of=None, layers: int = 8) -> pd.DataFrame:
    """Parameters (millions) of RecNet per (arch, feat) for alphabet amb+1 and amb²+1 classes.

    Built on the meta device (shapes only), so even the 230 M-parameter models cost nothing.
    `d_state_of(arch)` gives the state size the runs use (None = the architecture's default).
    """
    import torch

    from selectivbench.models.wrapper import RecNet

    rows = []
    for arch in architectures:
        for feat in feats:
            with torch.device("meta"):
                try:
                    model = RecNet(arch, feat, vocab=amb + 1, num_classes=amb * amb + 1, n_layers=layers,
                                   d_state=d_state_of(arch) if d_state_of else None)
                    params, width = model.num_parameters() / 1e6, model.width
                except ValueError:  # a size this architecture skips
                    params, width = math.nan, None
            rows.append(dict(arch=arch, feat=feat, width=width, params_M=params))
    return pd.DataFrame(rows)


def parameter_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Long counts -> feat × arch matrix (millions, 3 decimals; '—' for a skipped size)."""
    wide = counts.pivot(index="feat", columns="arch", values="params_M").reindex(columns=list(dict.fromkeys(counts["arch"])))
    return wide.map(lambda x: "—" if pd.isna(x) else f"{x:.3f}").reset_index()


def write_grammar(amb: int, seed: int, txt_path: str, json_path: str) -> dict:
    """Sample the automaton of (amb, seed) (spec §2) and write its transitions and a summary."""
    from selectivbench.grammar import generate_grammar

    g = generate_grammar(amb, seed)
    summary = dict(
        amb=amb, seed=seed, depth=g.depth, vocab=g.vocab, num_classes=g.num_classes, num_states=len(g.states),
        num_transitions=len(g.transitions), start_states=list(g.start_states), fingerprint=g.fingerprint(),
    )
    with open(txt_path, "w") as f:
        f.write(g.transitions_text())
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def grammar_table(json_paths: list[str]) -> pd.DataFrame:
    rows = []
    for path in json_paths:
        with open(path) as f:
            s = json.load(f)
        s["start_states"] = " ".join(s["start_states"])
        rows.append(s)
    return pd.DataFrame(rows).sort_values(["amb", "seed"]).reset_index(drop=True)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); NaN prints as '—'."""

    def cell(x) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
            return "—"
        if isinstance(x, float):
            return format(x, floatfmt)
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_table(df: pd.DataFrame, csv_path: str, md_path: str, title: str = "", note: str = "", html_path: str | None = None) -> None:
    df.to_csv(csv_path, index=False)
    with open(md_path, "w") as f:
        if title:
            f.write(f"# {title}\n\n")
        f.write(to_markdown(df))
        if note:
            f.write(f"\n{note}\n")
    if html_path:
        with open(html_path, "w") as f:
            body = df.to_html(index=False, na_rep="—", float_format=lambda x: f"{x:.4f}", border=0)
            f.write(f"<html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                    f"<h3>{title}</h3>{body}<p>{note}</p></body></html>\n")
