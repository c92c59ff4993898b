# SelectivBench (arXiv 2601.12598) as a Snakemake workflow:
#   sample grammars -> materialize datasets -> train runs (architecture = wildcard)
#   -> evaluate (Task-4 gaps, other test splits) -> aggregate -> select -> figures/tables.
# `snakemake --cores all` runs the quick CPU config (config/config.yaml);
# `snakemake --configfile config/paper.yaml ...` the paper's grids; `snakemake --report` the report.
# The rules live in workflow/rules/, their scripts in workflow/scripts/ (catalog layout).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


# from_rows: no rule trains or evaluates; the metrics.json files present are the rows
if not FROM_ROWS:

    include: "workflow/rules/train.smk"
    include: "workflow/rules/evaluate.smk"


include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_targets(),
