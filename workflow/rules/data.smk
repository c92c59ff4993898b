# Grammars and datasets (spec §2-5). One dataset per (test split, amb, seed): the Task-1/2/3/4
# grammars at amb 40 are shared. Sampling is parallel over sample indices inside one job
# (`--workers`), which is where it helps: 200 000 samples at amb 40 take ~50 core-minutes.


rule sample_grammar:
    output:
        txt=path(grid.GRAMMAR_FILE),
        json=path(grid.GRAMMAR_SUMMARY),
    log:
        path("logs/sample_grammar/amb{amb}_seed{seed}.log"),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/sample_grammar.py"


rule materialize_dataset:
    input:
        grammar=path(grid.GRAMMAR_FILE),
    output:
        meta=path(grid.DATA_FILES["meta.json"]),
        classes=path(grid.DATA_FILES["classes.npy"]),
        test=path(grid.DATA_FILES["test_classes.npy"]),
        transitions=path(grid.DATA_FILES["transitions.txt"]),
    log:
        path("logs/materialize_dataset/{split}/amb{amb}_seed{seed}.log"),
    benchmark:
        path("benchmarks/materialize_dataset/{split}/amb{amb}_seed{seed}.tsv")
    conda:
        CONDA_ENV
    threads: config["resources"]["dataset"]["threads"]
    resources:
        mem_mb=per_attempt("dataset", "mem_mb"),
        runtime=per_attempt("dataset", "runtime"),
    params:
        # training samples + the validation samples after them (for hyper-parameter selection)
        size=config["data"]["train_size"] + config["data"]["val_size"],
        test_size=config["data"]["test_size"],
    shell:
        # the dataset must hold the grammar sampled by `sample_grammar` (same generator, same seed)
        "python -m selectivbench dataset --amb {wildcards.amb} --seed {wildcards.seed}"
        " --size {params.size} --test-split {wildcards.split} --test-size {params.test_size}"
        " --workers {threads} --out $(dirname {output.meta}) > {log} 2>&1"
        " && cmp {input.grammar} {output.transitions} >> {log} 2>&1"
