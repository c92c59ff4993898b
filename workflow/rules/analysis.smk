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
        csv="results/tables/selection.csv",
        md="results/tables/selection.md",
        html=report(
            "results/tables/selection.html",
            caption="../report/selection.rst",
            category="Tables",
        ),
    log:
        "logs/select_hyperparameters.log",
    params:
        confidence=config["selection"]["confidence"],
    conda:
        CONDA_ENV
    script:
        "../scripts/select_hyperparameters.py"


rule tabulate_taxonomy:
    output:
        csv="results/tables/taxonomy.csv",
        md="results/tables/taxonomy.md",
        html=report(
            "results/tables/taxonomy.html",
            caption="../report/taxonomy.rst",
            category="Tables",
        ),
    log:
        "logs/tabulate_taxonomy.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule tabulate_parameter_counts:
    output:
        csv="results/tables/parameter_counts.csv",
        md="results/tables/parameter_counts.md",
        html=report(
            "results/tables/parameter_counts.html",
            caption="../report/parameter_counts.rst",
            category="Tables",
        ),
    log:
        "logs/tabulate_parameter_counts.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"


rule tabulate_grammars:
    input:
        [
            grid.GRAMMAR_FILE.format(amb=amb, seed=seed).replace(".txt", ".json")
            for amb, seed in PLAN.grammars
        ],
    output:
        csv="results/tables/grammars.csv",
        md="results/tables/grammars.md",
        html=report(
            "results/tables/grammars.html",
            caption="../report/grammars.rst",
            category="Tables",
        ),
    log:
        "logs/tabulate_grammars.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/tabulate.py"
