# From run directories to tables: aggregate every run, select hyper-parameters, tabulate.
# All CPU-only and quick: local rules (never queued on a cluster).


localrules:
    aggregate_runs,
    select_hyperparameters,
    tabulate_taxonomy,
    tabulate_parameter_counts,
    tabulate_grammars,
    judge_claims,


rule aggregate_runs:
    input:
        finished(PLAN.run_metrics()),
        finished(PLAN.evaluation_metrics()),
    output:
        parquet=path("results/runs.parquet"),
        csv=path("results/runs.csv"),
        curves=path("results/curves.parquet"),
    log:
        path("logs/aggregate_runs.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/aggregate_runs.py"


rule select_hyperparameters:
    input:
        path("results/runs.parquet"),
    output:
        **table_output("selection"),
    log:
        path("logs/select_hyperparameters.log"),
    conda:
        CONDA_ENV
    params:
        confidence=config["selection"]["confidence"],
    script:
        "../scripts/select_hyperparameters.py"


rule tabulate_taxonomy:
    output:
        **table_output("taxonomy"),
    log:
        path("logs/tabulate_taxonomy.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule tabulate_parameter_counts:
    output:
        **table_output("parameter_counts"),
    log:
        path("logs/tabulate_parameter_counts.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule tabulate_grammars:
    input:
        PLAN.grammar_summaries(),
    output:
        **table_output("grammars"),
    log:
        path("logs/tabulate_grammars.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule judge_claims:
    input:
        runs=path("results/runs.parquet"),
    output:
        **table_output("claims"),
    log:
        path("logs/judge_claims.log"),
    conda:
        CONDA_ENV
    params:
        confidence=config["selection"]["confidence"],
    script:
        "../scripts/judge_claims.py"
