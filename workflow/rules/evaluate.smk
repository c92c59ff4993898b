# Task 4 (spec §9): Task-2 checkpoints tested at longer gaps, on every test split; no training.
# Keyed by warmup too (the reference's checkpoint identity ignores it, §15.7). Same job runner
# as training (analysis/jobs.py): failures are retried, then recorded in metrics.json.
# The dataset is ancient() (see train.smk). Give Task 4 a high `priority` where checkpoints do
# not outlive the machine (bench/replicate_on_gpu.sh): each evaluation then follows its Task-2 run.


rule evaluate_gap_generalization:
    input:
        run=path(grid.with_task(grid.RUN_METRICS, grid.GAP_SOURCE_TASK)),
        data=ancient(path(grid.DATA_FILES["meta.json"])),
    output:
        metrics=path(grid.GAP_EVAL_METRICS),
    log:
        path(grid.GAP_EVAL_LOG),
    priority: job_priority(grid.GAP_TASK)
    retries: 0 if workflow.remote_exec else retries("evaluate")
    conda:
        CONDA_ENV
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        gpu=config["resources"]["evaluate"]["gpu"],
        gpu_mem_mb=gpu_mem("evaluate", grid.GAP_TASK),
        mem_mb=per_attempt("evaluate", "mem_mb"),
        runtime=per_attempt("evaluate", "runtime"),
    params:
        attempts=1 + retries("evaluate"),
        settings=lambda wildcards: GAP_SET_ARGS[wildcards.arch],
    shell:
        "OMP_NUM_THREADS={threads} exec python -m selectivbench.analysis.jobs --attempts {params.attempts}"
        " evaluate --run $(dirname {input.run}) --dataset $(dirname {input.data})"
        " --out $(dirname {output.metrics}) --set test_gap={wildcards.gap} {params.settings} >> {log} 2>&1"
