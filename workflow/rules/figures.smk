# Figures read only tables.


rule figure:
    input:
        f"{TABLES}/perf.csv",
    output:
        FIGDIR + "/{fig}.pdf",
    wildcard_constraints:
        fig="fig1[1-4]_(tpot|hit_rate|ttft|ablation)",
    script:
        "../scripts/figures.py"


rule figure_gpu:
    input:
        perf=f"{TABLES}/perf_gpu.csv",
        ablation=f"{TABLES}/ablation_gpu.csv",
    output:
        FIGDIR + "/{fig}_gpu.pdf",
    wildcard_constraints:
        fig="fig1[1-4]_(tpot|hit_rate|ttft|ablation)",
    script:
        "../scripts/figure_gpu.py"
