# Task 4 (spec §9): Task-2 checkpoints tested at longer gaps, on every test split; no training.
# Keyed by warmup too (the reference's checkpoint identity ignores it, §15.7). Same job runner
# as training (analysis/jobs.py): failures are retried, then recorded in metrics.json.


rule evaluate_gap_generalization:
    input:
        run=grid.RUN_DIR.replace("{task}", grid.GAP_SOURCE_TASK) + "/metrics.json",
        data=grid.DATA_DIR + "/meta.json",
    output:
        metrics=grid.GAP_EVAL_DIR + "/metrics.json",
    log:
        "logs/evaluate_gap_generalization/{split}/{arch}/" + grid.RUN_NAME + "_gap{gap}.log",
    params:
        attempts=1 + retries("evaluate"),
        settings=GAP_SET_ARGS,
    conda:
        CONDA_ENV
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        gpu=config["resources"]["evaluate"]["gpu"],
        mem_mb=per_attempt("evaluate", "mem_mb"),
        runtime=per_attempt("evaluate", "runtime"),
    retries: retries("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} exec python -m selectivbench.analysis.jobs --attempts {params.attempts}"
        " evaluate --run $(dirname {input.run}) --dataset $(dirname {input.data})"
        " --out $(dirname {output.metrics}) --set test_gap={wildcards.gap} {params.settings} >> {log} 2>&1"
