# From run directories to tables: aggregate every run, select hyper-parameters, tabulate.
# All CPU-only and quick: local rules (never queued on a cluster).


localrules:
    aggregate_runs,
    select_hyperparameters,
    tabulate_taxonomy,
    tabulate_parameter_counts,
    tabulate_grammars,


rule aggregate_runs:
    input:
        PLAN.run_metrics(),
        PLAN.evaluation_metrics(),
    output:
        parquet="results/runs.parquet",
        csv="results/runs.csv",
        curves="results/curves.parquet",
    log:
        "logs/aggregate_runs.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/aggregate_runs.py"


rule select_hyperparameters:
    input:
        "results/runs.parquet",
    output:
        **table_output("selection"),
    log:
        "logs/select_hyperparameters.log",
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
        "logs/tabulate_taxonomy.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule tabulate_parameter_counts:
    output:
        **table_output("parameter_counts"),
    log:
        "logs/tabulate_parameter_counts.log",
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
        "logs/tabulate_grammars.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"
