"""Rule select_hyperparameters: results/runs.parquet -> the selection table (both rules)."""

import pandas as pd

from selectivbench.analysis.jobs import redirect_output
from selectivbench.analysis.select import select
from selectivbench.analysis.tables import write_table

redirect_output(snakemake.log[0])
sel = select(pd.read_parquet(snakemake.input[0]), snakemake.params.confidence)
note = (
    "selected_by: val_acc = (lr, warmup) chosen by mean validation accuracy over seeds; "
    "'test_acc (no val_acc: authors' rule)' = the runs have no validation accuracy, chosen on test. "
    "*_authors columns: the authors' rule (best mean final test accuracy). "
    "test_ci: half-width of the Student-t confidence interval over seeds. "
    "n_diverged / n_failed count runs of the whole (lr, warmup) grid of the row. "
    "Rule used here (groups): " + ", ".join(f"{rule} {n}" for rule, n in sel["selected_by"].value_counts().items()) + "."
)
write_table(sel, snakemake.output.csv, snakemake.output.md, "Hyper-parameter selection", note, snakemake.output.html)
print(sel["selected_by"].value_counts(dropna=False).to_string())
