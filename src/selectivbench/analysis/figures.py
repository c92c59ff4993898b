"""The paper's figures (spec §13), each written as PDF + PNG.

Accuracy figures plot the selection table (select.py): test accuracy of the selected (lr, warmup),
mean ± CI over seeds. A point whose group holds diverged or failed runs gets a black ×; a group
where nothing finished is a red × at 0 — such runs are never silently dropped. When several test
splits exist (faithful, held-out), each gets its own row of panels.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from selectivbench.analysis.select import VAL_RULE  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
PROBLEM_MARK = dict(marker="x", color="black", s=40, linewidths=1.5, zorder=5)
NOTHING_MARK = dict(marker="x", color="red", s=60, linewidths=2, zorder=6)


def save(fig, pdf: str, png: str) -> None:
    fig.savefig(pdf, bbox_inches="tight")
    fig.savefig(png, bbox_inches="tight", dpi=150)
    plt.close(fig)


def arch_palette(archs) -> dict:
    archs = list(dict.fromkeys(archs))
    return dict(zip(archs, sns.color_palette("tab10", max(len(archs), 1))))


def selection_note(sel: pd.DataFrame) -> str:
    rules = set(sel["selected_by"].dropna())
    if rules <= {VAL_RULE, "skipped"}:
        return "(lr, warmup) selected on the validation split"
    if VAL_RULE in rules:
        return "(lr, warmup) selected on validation where available, else on test (authors' rule)"
    return "(lr, warmup) selected on the test set (authors' rule; runs have no val_acc)"


def empty_figure(pdf: str, png: str, title: str, message: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    save(fig, pdf, png)


def accuracy_panels(sel: pd.DataFrame, x: str, col: str | None, pdf: str, png: str, title: str, xlabel: str,
                    logx: bool = False) -> None:
    """Test accuracy vs `x`, one line per architecture, panels by `col` (columns) × test split (rows)."""
    if sel.empty:
        return empty_figure(pdf, png, title, "no runs in this config")
    sel = sel.copy()
    sel["_col"] = sel[col] if col else ""
    cols = sorted(sel["_col"].unique())
    splits = list(dict.fromkeys(sel["test_split"]))
    palette = arch_palette(sel["arch"])
    fig, axes = plt.subplots(len(splits), len(cols), figsize=(3.4 * len(cols) + 0.8, 2.8 * len(splits)),
                             squeeze=False, sharey=True)
    for i, split in enumerate(splits):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            panel = sel[(sel["test_split"] == split) & (sel["_col"] == c)]
            for arch, g in panel.groupby("arch", sort=False):
                g = g.sort_values(x)
                ok = g[g["test_mean"].notna()]
                ax.errorbar(ok[x], ok["test_mean"], yerr=ok["test_ci"].fillna(0), marker="o", ms=3.5, capsize=2,
                            color=palette[arch], label=arch)
                bad = ok[(ok["n_diverged"] + ok["n_failed"]) > 0]
                ax.scatter(bad[x], bad["test_mean"], **PROBLEM_MARK)
                none = g[g["test_mean"].isna() & (g["selected_by"] != "skipped")]
                ax.scatter(none[x], np.zeros(len(none)), **NOTHING_MARK)
            if logx:
                ax.set_xscale("log")
                plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
                ax.xaxis.set_major_formatter(plain)
                ax.xaxis.set_minor_formatter(plain)
            ax.set_ylim(-0.03, 1.03)
            label = f"{col} = {c}" if col else ""
            ax.set_title(", ".join(s for s in (label, f"test: {split}" if len(splits) > 1 else "") if s))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy" if j == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    seen["× diverged/failed runs in group"] = plt.Line2D([], [], ls="", marker="x", color="black")
    seen["× (red) nothing finished"] = plt.Line2D([], [], ls="", marker="x", color="red")
    fig.legend(seen.values(), seen.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"{title}\n{selection_note(sel)}; mean ± 95% CI over seeds", fontsize=9)
    fig.tight_layout()
    save(fig, pdf, png)


def own_condition(sel: pd.DataFrame, task: str) -> pd.DataFrame:
    """Rows of a training task tested under its own test condition (no Task-4 gap)."""
    return sel[(sel["task"] == task) & sel["test_gap"].isna()]


def size_axis(sel: pd.DataFrame) -> tuple[pd.DataFrame, str, str, bool]:
    """Plot against parameters (millions, log) when known, else the nominal feat_size."""
    if sel["num_parameters"].notna().all() and not sel.empty:
        sel = sel.assign(params_M=sel["num_parameters"].astype(float) / 1e6)
        return sel, "params_M", "parameters (millions)", True
    return sel, "feat", "feat_size", False


def accuracy_vs_ambiguity(sel: pd.DataFrame, pdf: str, png: str) -> None:
    accuracy_panels(own_condition(sel, "task1"), "amb", "feat", pdf, png,
                    "Task 1: accuracy vs number of ambiguities", "ambiguities (amb)")


def accuracy_vs_size(sel: pd.DataFrame, task: str, pdf: str, png: str, title: str, amb: int | None = None) -> None:
    rows = own_condition(sel, task)
    if amb is not None:
        rows = rows[rows["amb"] == amb]
    rows, x, xlabel, logx = size_axis(rows)
    accuracy_panels(rows, x, None, pdf, png, title, xlabel, logx=logx)


def accuracy_vs_gap(sel: pd.DataFrame, pdf: str, png: str) -> None:
    rows = sel[(sel["task"] == "task4") & sel["test_gap"].notna()]
    accuracy_panels(rows, "test_gap", "feat", pdf, png,
                    "Task 4: accuracy vs test gap (trained on gaps ≤ 1 unit = 10 steps)", "test gap (time units; 1 = 10 steps)",
                    logx=True)


def training_curves(curves: pd.DataFrame, sel: pd.DataFrame, runs: pd.DataFrame, pdf: str, png: str) -> None:
    """Test accuracy vs samples seen for the selected (lr, warmup), mean over seeds; × = a run ended early."""
    title = "Training curves of the selected settings"
    if curves.empty:
        return empty_figure(pdf, png, title, "no evals.csv found")
    chosen = sel[sel["test_gap"].isna() & (sel["test_split"] == runs["test_split"].iloc[0])][
        ["task", "arch", "feat", "amb", "lr", "warmup"]].dropna()
    top = curves.groupby("task")["amb"].transform("max")
    data = curves[curves["amb"] == top].merge(chosen, on=["task", "arch", "feat", "amb", "lr", "warmup"])
    if data.empty:
        return empty_figure(pdf, png, title, "no curves of selected settings")
    tasks, feats = sorted(data["task"].unique()), sorted(data["feat"].unique())
    palette = arch_palette(data["arch"])
    fig, axes = plt.subplots(len(tasks), len(feats), figsize=(3.4 * len(feats) + 0.8, 2.6 * len(tasks)), squeeze=False, sharey=True)
    ended = runs[runs["status"].isin(["diverged", "failed"]) & (runs["kind"] == "train")]
    for i, task in enumerate(tasks):
        for j, feat in enumerate(feats):
            ax = axes[i][j]
            panel = data[(data["task"] == task) & (data["feat"] == feat)]
            if not panel.empty:
                sns.lineplot(panel, x="samples", y="test_acc", hue="arch", palette=palette, errorbar=None, ax=ax, legend=False)
            for arch, g in panel.groupby("arch"):
                bad = ended.merge(g[["task", "arch", "feat", "amb", "lr", "warmup", "seed"]].drop_duplicates())
                for _, run in bad.iterrows():
                    last = g[g["seed"] == run["seed"]].sort_values("samples").tail(1)
                    ax.scatter(last["samples"], last["test_acc"], **PROBLEM_MARK)
            ax.set_title(f"{task}, feat {feat}, amb {int(panel['amb'].iloc[0]) if not panel.empty else '—'}")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("training samples")
            ax.set_ylabel("test accuracy" if j == 0 else "")
    handles = [plt.Line2D([], [], color=c, label=a) for a, c in palette.items()]
    handles.append(plt.Line2D([], [], ls="", marker="x", color="black", label="× run diverged/failed here"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"{title} (mean over seeds)", fontsize=9)
    fig.tight_layout()
    save(fig, pdf, png)


def task_illustration(pdf: str, png: str, amb: int = 3, seed: int = 1, elements: int = 10) -> None:
    """A small grammar (states coloured by the letter they emit) and one input stream per task."""
    from selectivbench.grammar import generate_grammar
    from selectivbench.inputs import InputSpec, make_batch
    from selectivbench.sampling import sample_classes

    g = generate_grammar(amb, seed)
    classes = sample_classes(g, seed, 0, 1)
    streams = [
        ("Task 1: 1-step gaps", InputSpec()),
        ("Task 2: gaps of 1–10 steps + noise 0.2", InputSpec(gap_max=1.0, noise=0.2)),
        ("Task 3: non-grammatical distractors (gap_prob 0.5 here; paper 0.1 after element 50)",
         InputSpec(gap_prob=0.5, grammar_gap=True)),
    ]
    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(len(streams), 2, width_ratios=[1, 2.2])
    draw_grammar(fig.add_subplot(grid[:, 0]), g)
    for i, (title, spec) in enumerate(streams):
        ax = fig.add_subplot(grid[i, 1])
        batch = make_batch(classes, np.array([0]), g, spec, split="train", seed=seed)
        keep = (batch.element[0] >= 0) & (batch.element[0] < elements)
        data = batch.data[0][keep].numpy().T  # V x steps
        labels = batch.labels[0][keep].numpy()
        ax.imshow(data, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        first = np.r_[True, batch.element[0][keep].numpy()[1:] != batch.element[0][keep].numpy()[:-1]]
        for t in np.flatnonzero(first):
            ax.axvline(t - 0.5, color="tab:blue", lw=0.6)
            ax.text(t, -0.9, g.state_of_class(int(labels[t])), fontsize=6, ha="left", va="bottom", color="tab:blue")
        ax.set_yticks(range(g.vocab), ["#"] + [chr(65 + k) for k in range(g.vocab - 1)], fontsize=6)
        ax.set_ylim(g.vocab - 0.5, -1.6)
        ax.set_title(title, fontsize=8, loc="left", pad=10)
        ax.set_xlabel("time step" if i == len(streams) - 1 else "")
        ax.grid(False)
    fig.suptitle(f"SelectivBench tasks: grammar amb={amb}, seed={seed} ({g.num_classes} classes) and "
                 f"its first {elements} elements as input streams (blue: element start and label)", fontsize=9)
    fig.tight_layout()
    save(fig, pdf, png)


def draw_grammar(ax, g) -> None:
    """States on a circle, grouped by letter; edges are transitions (width ∝ probability)."""
    states = list(g.states)
    order = sorted(states, key=lambda s: (s == "#", s))
    angle = {s: 2 * math.pi * k / len(order) for k, s in enumerate(order)}
    pos = {s: (math.cos(a), math.sin(a)) for s, a in angle.items()}
    letters = sorted({s[0] for s in states if s != "#"})
    colors = dict(zip(letters, sns.color_palette("Set2", len(letters))))
    for src, dst, prob in g.transitions:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", lw=0.4 + 2 * float(prob), color="0.55", alpha=0.7,
                                    shrinkA=9, shrinkB=9, connectionstyle="arc3,rad=0.12"))
    for s in states:
        x, y = pos[s]
        color = "white" if s == "#" else colors[s[0]]
        edge = "black" if s in g.start_states else "0.5"
        ax.scatter([x], [y], s=380, color=color, edgecolors=edge, linewidths=2.2 if s in g.start_states else 0.8, zorder=3)
        ax.text(x, y, s, ha="center", va="center", fontsize=7, zorder=4)
    ax.set_title(f"grammar: {len(states)} states, {g.vocab} symbols\n(colour = emitted letter; bold ring = start state)", fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")
