"""Rules tabulate_*: the taxonomy (spec §12), parameter counts (§10.4) and grammar tables."""

from selectivbench.analysis import tables
from selectivbench.analysis.jobs import redirect_output
from selectivbench.analysis.plan import registered_architectures, task_grid

redirect_output(snakemake.log[0])
config, out = snakemake.config, snakemake.output
registered_architectures(config)

if snakemake.rule == "tabulate_taxonomy":
    from selectivbench.models.registry import get_mixer

    summaries = {a: get_mixer(a).summary for a in config["architectures"]}
    df = tables.taxonomy_table(config["architectures"], summaries)
    tables.write_table(df, out.csv, out.md, "Taxonomy of the architectures (spec §12, reconstruction)",
                       "A_t: state transition, B_t: write, C_t: read-out of S_t = A_t ∘ S_{t-1} + B_t.", out.html)
elif snakemake.rule == "tabulate_parameter_counts":
    grids = [task_grid(config, t) for t in ("task1", "task2", "task3")]
    feats = sorted({f for g in grids if g for f in g["feat"]})
    amb = max(a for g in grids if g for a in g.get("amb", [40]))
    d_state, layers = config["train"].get("d_state"), config["train"].get("layers", 8)
    counts = tables.parameter_counts(config["architectures"], feats, amb, lambda arch: d_state, layers)
    tables.write_table(tables.parameter_table(counts), out.csv, out.md,
                       f"Parameters (millions) at V={amb + 1}, C={amb * amb + 1}, {layers} layers",
                       "— = size skipped by the architecture. Counts from RecNet built on the meta device.", out.html)
elif snakemake.rule == "tabulate_grammars":
    df = tables.grammar_table(list(snakemake.input))
    tables.write_table(df, out.csv, out.md, "Grammars", "fingerprint: spec §14.", out.html)
else:
    raise ValueError(f"tabulate.py does not know rule {snakemake.rule!r}")
