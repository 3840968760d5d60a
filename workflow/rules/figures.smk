# Figures read only tables.


rule figure:
    input:
        f"{TABLES}/perf.csv",
    output:
        FIGDIR + "/{fig}.pdf",
    wildcard_constraints:
        fig="fig1[1-4]_[a-z_]+",
    script:
        "../scripts/figures.py"
