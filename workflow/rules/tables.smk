# Tables only concatenate run JSONs.


rule perf_table:
    input:
        RUNS,
    output:
        f"{TABLES}/perf.csv",
    script:
        "../scripts/perf_table.py"
