# Figures read only tables.


rule figure:
    input:
        "results/tables/perf.csv",
    output:
        "figures/{fig}.pdf",
    wildcard_constraints:
        fig="fig1[1-4]_[a-z_]+",
    script:
        "../scripts/figures.py"
