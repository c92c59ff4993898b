# The paper's figures (spec §13): one rule each, PDF + PNG, PNG shown in the report.


localrules:
    draw_task_illustration,
    draw_task1_complexity,
    draw_task1_model_size,
    draw_task2_noise_gaps,
    draw_task3_distractors,
    draw_task4_gap_generalization,
    draw_training_curves,


rule draw_task_illustration:
    output:
        **figure_output("task_illustration", "Tasks"),
    log:
        path("logs/draw/task_illustration.log"),
    conda:
        CONDA_ENV
    params:
        **config["illustration"],
    script:
        "../scripts/draw_figure.py"


rule draw_task1_complexity:
    input:
        selection=path("results/tables/selection.csv"),
    output:
        **figure_output("task1_complexity", "Task 1"),
    log:
        path("logs/draw/task1_complexity.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/draw_figure.py"


rule draw_task1_model_size:
    input:
        selection=path("results/tables/selection.csv"),
    output:
        **figure_output("task1_model_size", "Task 1"),
    log:
        path("logs/draw/task1_model_size.log"),
    conda:
        CONDA_ENV
    params:
        amb=max(config["tasks"]["task1"]["amb"]) if "task1" in config["tasks"] else None,
    script:
        "../scripts/draw_figure.py"


rule draw_task2_noise_gaps:
    input:
        selection=path("results/tables/selection.csv"),
    output:
        **figure_output("task2_noise_gaps", "Task 2"),
    log:
        path("logs/draw/task2_noise_gaps.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/draw_figure.py"


rule draw_task3_distractors:
    input:
        selection=path("results/tables/selection.csv"),
    output:
        **figure_output("task3_distractors", "Task 3"),
    log:
        path("logs/draw/task3_distractors.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/draw_figure.py"


rule draw_task4_gap_generalization:
    input:
        selection=path("results/tables/selection.csv"),
    output:
        **figure_output("task4_gap_generalization", "Task 4"),
    log:
        path("logs/draw/task4_gap_generalization.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/draw_figure.py"


rule draw_training_curves:
    input:
        selection=path("results/tables/selection.csv"),
        curves=path("results/curves.parquet"),
        runs=path("results/runs.parquet"),
    output:
        **figure_output("training_curves", "Training"),
    log:
        path("logs/draw/training_curves.log"),
    conda:
        CONDA_ENV
    script:
        "../scripts/draw_figure.py"
