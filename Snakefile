# The reproduction DAG. `snakemake --cores` runs the embedded default (config/config.yaml);
# `snakemake --cores --configfile config/test.yaml` the CI grid. Logic lives in smoe/dag.py and
# workflow/scripts/; rules in workflow/rules/.
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/accuracy.smk"
include: "workflow/rules/routing.smk"
include: "workflow/rules/heal.smk"


rule all:
    input:
        f"{TABLES}/perf.csv",
        MACHINE,
        FIGURES,
        ACC_TABLES,
        GPU_TABLES,
        [f"{FIGDIR}/fig5_score_by_rank.pdf"] if CKPT_MODELS else [],  # routing statistics need real routing
