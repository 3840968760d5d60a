# Accuracy through the runtime (config section `accuracy`): one lm-eval job per (model, budget, policy,
# alpha), then Tables IV-VI. Each job evaluates every configured task on the first `limit` documents.
from smoe.accuracy import alpha_policies
from smoe.dag import ACCURACY, budget_args

ACC_DIR = config.get("accuracy_dir", "results/accuracy")
ALPHA_POLICIES = alpha_policies()


def _acc_model(w):
    if w.policy == "dense":
        return f"models/{w.model}/dense/config.json"
    return _model_dir(w)


def _acc_args(w):
    args = []
    if w.budget != "dense":
        b = budget_args(w.budget)
        args.append(f"--cache-experts {b['cache_experts']}" if "cache_experts" in b else f"--budget-gb {b['budget_gb']}")
    if w.policy in ALPHA_POLICIES:
        args.append(f"--set alpha={w.alpha}")
    return " ".join(args)


rule accuracy:
    input:
        model=_acc_model,
        data=rules.fetch_data.output,
    output:
        ACCURACY.replace("{dir}", ACC_DIR),
    params:
        args=_acc_args,
        tasks=",".join(config.get("accuracy", {}).get("tasks", [])),
        limit=config.get("accuracy", {}).get("limit"),  # only what a job uses: adding an alpha reruns nothing else
        batch=config.get("accuracy", {}).get("batch", 8),
    threads: 1
    log:
        "logs/accuracy/{model}/{budget}/{policy}/a{alpha}.log",
    shell:
        "OMP_NUM_THREADS={threads} {PY} eval --model $(dirname {input.model}) --policy {wildcards.policy} "
        "{params.args} --tasks {params.tasks} --limit {params.limit} --batch {params.batch} "
        "--seed {config[seed]} --resources {config[resources]} --out {output} > {log} 2>&1"


rule accuracy_tables:
    input:
        ACC_RECORDS,
    output:
        long=f"{TABLES}/accuracy.csv",
        table4=f"{TABLES}/table4_accuracy_vs_alpha.csv",
        table56=f"{TABLES}/table5_6_substitution_policies.csv",
        margin=f"{TABLES}/accuracy_margin.json",
    script:
        "../scripts/accuracy_tables.py"
