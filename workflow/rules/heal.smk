# Healing (GPU only; not part of the default target): `snakemake results/heal/e64k32s384/e64k32s384.safetensors`
# reproduces a smolmoe recipe from scratch (7.5 min on an H200 at 760 steps; README "smolmoe-135m"). A model
# whose `smolmoe: {recipe: results/heal/<topology>/<topology>.safetensors}` names it is then assembled from it.
HEAL = {"steps": 760, "batch": 64, "plain_per_prompt": 0} | config.get("heal", {})


rule heal:
    input:
        rules.fetch_smollm2.output,
    output:
        recipe="results/heal/{topology}/{topology}.safetensors",
        summary="results/heal/{topology}/heal.json",
    wildcard_constraints:
        topology=r"e\d+k\d+s\d+",
    params:
        h=HEAL,
    resources:
        gpu=1,
    log:
        "logs/heal/{topology}.log",
    shell:
        "{PY} heal --topology {wildcards.topology} --steps {params.h[steps]} --batch {params.h[batch]} "
        "--plain-per-prompt {params.h[plain_per_prompt]} --resources {config[resources]} --device cuda "
        "--out results/heal/{wildcards.topology} > {log} 2>&1"
