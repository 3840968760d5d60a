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
        f"{TABLES}/perf_gpu.csv",
    output:
        f"{FIGDIR}/fig11_tpot_gpu.pdf",
    script:
        "../scripts/figure_gpu.py"
