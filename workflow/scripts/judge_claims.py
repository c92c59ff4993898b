"""Rule judge_claims: the results table -> the claims of the paper's abstract with verdicts."""

import pandas as pd

from selectivbench.analysis.claims import write_claims
from selectivbench.analysis.jobs import redirect_output

redirect_output(snakemake.log[0])
out = snakemake.output
table = write_claims(pd.read_parquet(snakemake.input.runs), out.csv, out.md, out.html, snakemake.params.confidence)
print(table[table["level"] == "claim"][["claim", "verdict", "note"]].to_string(index=False))
