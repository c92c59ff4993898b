"""Rule sample_grammar: the automaton of one (amb, seed) as transitions text + a JSON summary."""

from selectivbench.analysis.jobs import redirect_output
from selectivbench.analysis.tables import write_grammar

redirect_output(snakemake.log[0])
write_grammar(int(snakemake.wildcards.amb), int(snakemake.wildcards.seed), snakemake.output.txt, snakemake.output.json)
