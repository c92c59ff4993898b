# Training runs (spec §9, §11): one job per (task, architecture, size, amb, lr, warmup, seed).
# Only metrics.json files are declared outputs: Snakemake deletes the outputs of a failed job,
# and a preempted run must keep its checkpoint.pt/evals.csv to resume on the retry. `exec` hands
# the job's process to Python, so the scheduler's SIGTERM reaches the training loop.
# A finished run is tested on the other test splits (held-out) in the same job (--also-test).

EXTRA_SPLITS = config["test_splits"][1:]


rule train_run:
    input:
        data=grid.DATA_DIR.replace("{split}", PLAN.train_split) + "/meta.json",
        **{
            f"data_{s}": grid.DATA_DIR.replace("{split}", s) + "/meta.json"
            for s in EXTRA_SPLITS
        },
    output:
        metrics=grid.RUN_DIR + "/metrics.json",
        **{
            f"test_{s}": grid.SPLIT_EVAL_DIR.replace("{split}", s) + "/metrics.json"
            for s in EXTRA_SPLITS
        },
    log:
        "logs/train_run/{task}/{arch}/" + grid.RUN_NAME + ".log",
    params:
        attempts=1 + retries("train"),
        settings=lambda wildcards: TASK_SET_ARGS[wildcards.task],
    conda:
        CONDA_ENV
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        mem_mb=per_attempt("train", "mem_mb"),
        runtime=per_attempt("train", "runtime"),
    retries: retries("train")
    shell:
        "OMP_NUM_THREADS={threads} exec python -m selectivbench.analysis.jobs"
        " --attempts {params.attempts}"
        + "".join(
            f" --also-test $(dirname {{input.data_{s}}}) $(dirname {{output.test_{s}}})"
            for s in EXTRA_SPLITS
        )
        + " train --dataset $(dirname {input.data}) --out $(dirname {output.metrics})"
        " --set task={wildcards.task} --set arch={wildcards.arch} --set feat_size={wildcards.feat}"
        " --set lr={wildcards.lr} --set warmup={wildcards.warmup} --set seed={wildcards.seed}"
        " {params.settings} >> {log} 2>&1"
