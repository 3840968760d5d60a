# Placeholder until the reproduction DAG lands (issue: "Reproduction DAG"). For now the main job is
# `make demo` (python -m smoe demo); this target runs the same thing so `snakemake --cores 1` works.
rule all:
    output: "results/demo/slots96/lru.json"
    shell: "python -m smoe demo --out results/demo"
