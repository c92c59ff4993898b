# Training runs (spec §9, §11): one job per (task, architecture, size, amb, lr, warmup, seed).
# Only metrics.json files are declared outputs: Snakemake deletes the outputs of a failed job,
# and a preempted run must keep its checkpoint.pt/evals.csv to resume on the retry. `exec` hands
# the job's process to Python, so the scheduler's SIGTERM reaches the training loop.
# A finished run is tested on the other test splits (held-out) in the same job (--also-test).
# The datasets are ancient(): a dataset regenerated later (on another machine, or after it was
# deleted to save space) does not make finished runs outdated; only a missing metrics.json does.


rule train_run:
    input:
        **{
            f"data_{s}": ancient(
                path(grid.with_split(grid.DATA_FILES["meta.json"], s))
            )
            for s in EXTRA_SPLITS
        },
        data=ancient(
            path(grid.with_split(grid.DATA_FILES["meta.json"], PLAN.train_split))
        ),
    output:
        **{
            f"test_{s}": path(grid.with_split(grid.SPLIT_EVAL_METRICS, s))
            for s in EXTRA_SPLITS
        },
        metrics=path(grid.RUN_METRICS),
    log:
        path(grid.RUN_LOG),
    priority: job_priority(None)
    retries: 0 if workflow.remote_exec else retries("train")
    conda:
        CONDA_ENV
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        gpu_mem_mb=gpu_mem("train"),
        mem_mb=per_attempt("train", "mem_mb"),
        runtime=per_attempt("train", "runtime"),
    params:
        attempts=1 + retries("train"),
        settings=lambda wildcards: TASK_SET_ARGS[(wildcards.task, wildcards.arch)],
    shell:
        f"OMP_NUM_THREADS={{threads}} exec python -m selectivbench.analysis.jobs"
        f" --attempts {{params.attempts}}{also_test_args()}"
        " train --dataset $(dirname {input.data}) --out $(dirname {output.metrics})"
        " --set task={wildcards.task} --set arch={wildcards.arch} --set feat_size={wildcards.feat}"
        " --set lr={wildcards.lr} --set warmup={wildcards.warmup} --set seed={wildcards.seed}"
        " {params.settings} >> {log} 2>&1"
