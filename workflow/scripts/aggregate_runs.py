"""Rule aggregate_runs: every run and evaluation of the config -> results/runs.{parquet,csv}, curves."""

from selectivbench.analysis.aggregate import write_results
from selectivbench.analysis.jobs import redirect_output
from selectivbench.analysis.plan import plan, registered_architectures

redirect_output(snakemake.log[0])
registered_architectures(snakemake.config)  # plugins decide which sizes exist
df = write_results(plan(snakemake.config), snakemake.output.parquet, snakemake.output.csv, snakemake.output.curves)
print(df["status"].value_counts(dropna=False).to_string())
