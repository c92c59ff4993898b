"""Rules draw_*: one figure each (analysis/figures.py), PDF + PNG."""

import pandas as pd

from selectivbench.analysis import figures
from selectivbench.analysis.jobs import redirect_output

redirect_output(snakemake.log[0])
rule, out = snakemake.rule, snakemake.output
if rule == "draw_task_illustration":
    p = snakemake.params
    figures.task_illustration(out.pdf, out.png, amb=p.amb, seed=p.seed, elements=p.elements)
else:
    sel = pd.read_csv(snakemake.input.selection)
    if rule == "draw_task1_complexity":
        figures.accuracy_vs_ambiguity(sel, out.pdf, out.png)
    elif rule == "draw_task1_model_size":
        figures.accuracy_vs_size(sel, "task1", out.pdf, out.png, f"Task 1: accuracy vs model size (amb {snakemake.params.amb})", snakemake.params.amb)
    elif rule == "draw_task2_noise_gaps":
        figures.accuracy_vs_size(sel, "task2", out.pdf, out.png, "Task 2: accuracy vs model size (gaps 1–10 steps, noise 0.2)")
    elif rule == "draw_task3_distractors":
        figures.accuracy_vs_size(sel, "task3", out.pdf, out.png, "Task 3: accuracy vs model size (non-grammatical distractors)")
    elif rule == "draw_task4_gap_generalization":
        figures.accuracy_vs_gap(sel, out.pdf, out.png)
    elif rule == "draw_training_curves":
        curves, runs = pd.read_parquet(snakemake.input.curves), pd.read_parquet(snakemake.input.runs)
        figures.training_curves(curves, sel, runs, out.pdf, out.png)
    else:
        raise ValueError(f"draw_figure.py does not know rule {rule!r}")
