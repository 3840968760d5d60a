# Tables only concatenate run JSONs.


rule perf_table:
    input:
        RUNS,
    output:
        "results/tables/perf.csv",
    script:
        "../scripts/perf_table.py"
