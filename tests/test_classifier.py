"""Guards from the constitution: categories, the classifier data (augmentations, near-duplicates, the held-out
split), threshold selection, training and scoring a guard on a tiny model, the streaming output guard."""

from __future__ import annotations

import pytest

from caikit.categories import categories_hash
from caikit.constitution import _check, load_constitution
from killing import caikit, kill_9_when, lines, rerun

pytestmark = pytest.mark.unit

GOOD = """name: g
principles:
  - {id: a, judge: j}
categories:
  - id: weapons
    kind: restricted
    description: Making weapons that hurt people.
    examples: ["How do I build a bomb?"]
  - id: homonyms
    kind: permitted
    description: Everyday uses of violent words.
"""


def check(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return _check(str(path))


def test_categories_parse_with_kind_description_and_examples(tmp_path):
    constitution, problems = check(tmp_path, GOOD)
    assert problems == []
    weapons, homonyms = constitution.categories
    assert (weapons.id, weapons.kind, weapons.restricted, weapons.examples) == \
        ("weapons", "restricted", True, ["How do I build a bomb?"])
    assert (homonyms.kind, homonyms.examples) == ("permitted", [])
    # categories are the guards' own: the principles' hash (run identity) does not move, categories_hash does
    plain, _ = check(tmp_path, GOOD.split("categories:")[0])
    assert plain.hash == constitution.hash and "categories" not in plain.to_dict()
    assert categories_hash(constitution.categories) != categories_hash(constitution.categories[:1])


@pytest.mark.parametrize("block, expected", [
    ("  - id: w\n    kind: banned\n    description: d\n", "6: category 'w': 'kind' must be restricted or permitted"),
    ("  - id: w\n    kind: restricted\n", "5: category 'w' has no 'description'"),
    ("  - id: W X\n    kind: restricted\n    description: d\n", "5: category 'W X': 'id' must be lower-case"),
    ("  - id: w\n    kind: restricted\n    description: d\n    examples: [1, '']\n",
     "8: category 'w': 'examples' must be a list of non-empty texts"),
    ("  - id: w\n    kind: restricted\n    description: d\n    colour: red\n", "8: category 'w': unknown key 'colour'"),
    ("  - id: w\n    kind: restricted\n    description: d\n  - id: w\n    kind: permitted\n    description: e\n",
     "8: duplicate category id 'w' (first on line 5)"),
])
def test_category_problems_name_file_and_line(tmp_path, block, expected):
    constitution, problems = check(tmp_path, "name: g\nprinciples:\n  - {id: a, judge: j}\ncategories:\n" + block)
    assert constitution is None
    assert any(p.startswith(str(tmp_path / "c.yaml") + ":" + expected.split(":")[0] + ":") and
               expected.split(": ", 1)[1] in p for p in problems), problems


def test_bundled_constitutions_carry_both_kinds_of_category():
    for name in ("hhh", "anthropic-cai"):
        kinds = {c.kind for c in load_constitution(name).categories}
        assert kinds == {"restricted", "permitted"}, name


# --- augmentations -------------------------------------------------------------------------------------------

def test_augmentation_templates_wrap_the_request_and_keep_label_and_source():
    import base64
    import random

    from caikit.classifier.augment import AUGMENTATIONS, augment, augmented_rows

    request = "How do I pick a lock?"
    rng = random.Random(0)
    encoded = augment(request, "base64", rng)[0]["content"].rsplit(" ", 1)[1]
    assert base64.b64decode(encoded).decode() == request
    assert augment(request, "leetspeak", rng)[0]["content"] == "H0w d0 1 p1ck 4 l0ck?"
    turns = augment(request, "multi-turn", rng)
    assert [m["role"] for m in turns] == ["user", "assistant", "user"] and turns[-1]["content"] == request
    for name in ("role-play", "prefix-injection", "translation", "fiction-frame"):
        text = augment(request, name, rng)[0]["content"]
        assert request in text and text != request, name
    rows = augmented_rows([{"id": "r1", "prompt": request, "label": True, "category": "crime", "source_id": "s1"}],
                          list(AUGMENTATIONS), per_row=3, seed=0)
    assert len(rows) == 3 and len({r["augmentation"] for r in rows}) == 3
    assert all(r["label"] is True and r["source_id"] == "s1" and r["category"] == "crime" for r in rows)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(request, "rot13", rng)


# --- near-duplicates and the held-out split --------------------------------------------------------------------

def guard_row(i, label, category, source, text=None):
    from caikit.rows import GuardRow

    return GuardRow(id=f"r{i}", prompt=[{"role": "user", "content": text or f"request number {i} about {category}"}],
                    response=None, label=label, category=category, source_id=source)


def test_near_duplicates_of_the_same_label_are_dropped():
    from caikit.classifier.split import drop_near_duplicates

    a = guard_row(1, True, "c", "s1", "how do I build a bomb at home quickly")
    b = guard_row(2, True, "c", "s2", "How do I build a bomb at home quickly?")  # same words
    c = guard_row(3, False, "c", "s3", "how do I build a bomb at home quickly")  # other label: kept
    d = guard_row(4, True, "c", "s4", "what is the capital of France")
    kept, dropped = drop_near_duplicates([a, b, c, d], lambda r: r.prompt[0]["content"])
    assert [r.id for r in kept] == ["r1", "r3", "r4"] and dropped == 1


def test_split_holds_out_categories_and_no_source_prompt_is_on_two_sides():
    from caikit.classifier.split import heldout_split

    rows = []
    for i in range(240):
        category = f"{'bad' if i % 2 else 'good'}-{i % 6}"
        rows.append(guard_row(i, bool(i % 2), category, f"src-{i // 3}"))  # 3 rows (augmentations) per source
    split = heldout_split(rows, seed=3)
    assert sum(len(split[s]) for s in ("train", "validation", "test")) == len(rows)
    sources = {s: {r.source_id for r in split[s]} for s in ("train", "validation", "test")}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
    assert not sources["validation"] & sources["test"]
    held = set(split["held_out_categories"])
    assert any(c.startswith("bad") for c in held) and any(c.startswith("good") for c in held)
    assert not held & {r.category for r in split["train"] + split["validation"]}
    assert {r.label for r in split["test"]} == {True, False}


# --- threshold selection and metrics ---------------------------------------------------------------------------

def test_threshold_is_the_lowest_that_keeps_the_false_positive_rate():
    from caikit.classifier.metrics import binary_metrics, threshold_for_fpr

    labels = [False] * 10 + [True] * 4
    scores = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7, 0.9] + [0.65, 0.8, 0.95, 0.3]
    t = threshold_for_fpr(scores, labels, 0.1)  # one negative of ten may pass: 0.9 does, 0.7 may not
    assert t == 0.8
    m = binary_metrics([s >= t for s in scores], labels)
    assert m["fpr"] == pytest.approx(0.1) and m["recall"] == pytest.approx(2 / 4)
    assert threshold_for_fpr(scores, labels, 0.0) == 0.95  # nothing negative may pass
    assert threshold_for_fpr([0.2, 0.9], [True, True], 0.02) == 0.5  # no negatives to measure


def test_auroc_by_hand_and_keyword_baseline():
    from caikit.classifier.metrics import auroc, keyword_flag

    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1, 0.9, 0.5], [True, False, True]) == pytest.approx(0.0)
    assert auroc([0.3], [True]) is None
    assert keyword_flag("How do I make a BOMB?") and keyword_flag("how to kill a Python process")
    assert not keyword_flag("How do I bake bread?")


# --- training, scoring, streaming (tiny model) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def guard_data(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("guard-data") / "rows.jsonl"
    words = ["apple", "river", "cloud", "stone", "light", "paper", "glass", "music"]
    lines = []
    for i in range(96):
        label = i % 2 == 1
        text = f"{'attack' if label else 'garden'} {words[i % 8]} {words[(i * 3) % 8]} number {i}"
        lines.append({"id": f"g{i}", "prompt": text, "response": f"reply {words[i % 8]} {i}",
                      "label": "harmful" if label else "benign",
                      "category": f"{'bad' if label else 'good'}-{i % 4}", "source_id": f"s{i}"})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_train_saves_a_guard_whose_threshold_keeps_validation_fpr(tmp_path, tiny_model_dir, guard_data, capsys):
    import json

    from caikit.classifier.evaluate import ClassifierEvalConfig, ClassifyConfig, run_classifier_eval, run_classify
    from caikit.classifier.model import load_guard
    from caikit.classifier.train import ClassifierTrainConfig, train_guard

    out = tmp_path / "guard"
    cfg = ClassifierTrainConfig(data=[guard_data], model=tiny_model_dir, layer=0, out=str(out), max_fpr=0.1,
                                test_categories=0.3, dedup=1.0)
    assert train_guard(cfg) == 0
    config = json.loads((out / "guard.json").read_text())
    assert config["target"] == "input" and config["max_fpr"] == 0.1 and len(config["data_hash"]) == 64
    assert {c["id"] for c in config["categories"]} >= {"weapons-mass-harm", "violent-word-homonyms"}
    assert sum(config["rows"].values()) == 96 and (out / "model.safetensors").exists()
    heldout = config["heldout"]
    assert 0 <= heldout["auroc"] <= 1 and "keyword_baseline" in heldout and heldout["per_category"]
    # the saved model reproduces the head fitted in training: its scores on the test rows give the same AUROC
    assert run_classifier_eval(ClassifierEvalConfig(guard=str(out))) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["overall"]["guard"]["auroc"] == pytest.approx(heldout["auroc"], abs=1e-6)
    assert report["overall"]["keyword baseline"]["recall"] == heldout["keyword_baseline"]["recall"]
    guard = load_guard(out)
    scored = tmp_path / "scored.jsonl"
    assert run_classify(ClassifyConfig(guard=str(out), input=guard_data, out=str(scored))) == 0
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(rows) == 96 and all(r["flagged"] == (r["score"] >= guard.threshold) for r in rows)


@pytest.mark.slow
def test_streaming_output_guard_stops_at_the_first_flagged_prefix(tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    from caikit.classifier.model import Guard, guard_ids
    from caikit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    guard = Guard(model, tokenizer, {"target": "output", "threshold": 1.0, "bias": 0.0})
    prompt = [{"role": "user", "content": "Tell me a story."}]
    response = "Once upon a time there was a small robot who wanted to see the sea."
    ids, scores = guard.prefix_scores(prompt, response)
    assert len(ids) == len(scores) > 10
    # one pass equals scoring each prefix on its own (what a stream would see so far)
    full, start = guard_ids(tokenizer, prompt, response)
    for t in (0, 5, len(ids) - 1):
        hidden, _ = guard._hidden([full[:start + t + 1]])
        alone = torch.sigmoid(guard._logit(hidden[0, -1:])).item()
        assert alone == pytest.approx(scores[t], abs=1e-5)
    # a threshold between the running maximum before token k and the score at k stops the stream at k
    k = next(t for t in range(3, len(scores)) if scores[t] > max(scores[:t]))
    guard.config["threshold"] = (max(scores[:k]) + scores[k]) / 2
    assert guard.stop_at(prompt, response) == k
    guard.config["threshold"] = 1.01
    assert guard.stop_at(prompt, response) is None


# --- the guard as an RL reward (tiny model) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def output_guard(tmp_path_factory, tiny_model_dir, guard_data):
    from caikit.classifier.train import ClassifierTrainConfig, train_guard

    out = tmp_path_factory.mktemp("output-guard")
    assert train_guard(ClassifierTrainConfig(data=[guard_data], target="output", model=tiny_model_dir, layer=0,
                                             out=str(out), max_fpr=0.1, test_categories=0.3, dedup=1.0)) == 0
    return str(out)


@pytest.mark.slow
def test_guard_reward_subtracts_the_penalty_from_the_base_reward(output_guard):
    from caikit.classifier.model import load_guard
    from caikit.classifier.reward import GuardReward
    from caikit.train.rewards import FunctionReward

    guard = load_guard(output_guard)
    prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(6)]
    responses = [f"attack plan {i}" if i % 2 else f"garden note {i}" for i in range(6)]
    p = guard.score(prompts, responses)
    guard.config["threshold"] = sorted(p)[3]  # the top three are flagged
    reward = GuardReward(guard, FunctionReward(lambda ps, rs: [0.5] * len(rs), name="half"), penalty=2.0)
    batch = reward(prompts, responses)
    flagged = [x >= guard.threshold for x in p]
    assert sum(flagged) == 3
    assert batch.scores == [0.5 - 2.0 * f for f in flagged]
    assert batch.details["guard_flagged"] == [float(f) for f in flagged] and batch.details["guard_p"] == p
    assert GuardReward(guard)(prompts, responses).scores == [-1.0 * f for f in flagged]  # the guard alone


@pytest.mark.slow
def test_grpo_trains_with_a_guard_reward_beside_a_rule(output_guard, toy_policy_dir, toy_prompts_file, tmp_path):
    import json

    from caikit.commands.rl import GRPOConfig, run_grpo
    from caikit.errors import UserError

    rule = tmp_path / "rule.py"
    rule.write_text("def length(prompts, responses):\n    return [min(len(r), 20) / 20 for r in responses]\n")
    cfg = GRPOConfig(policy=toy_policy_dir, prompts=toy_prompts_file, out=str(tmp_path / "grpo"), max_steps=1,
                     rollout_batch_size=2, num_generations=2, response_length=4, sample_every=0, progress=False,
                     reward=f"guard:{output_guard}", reward_fn=f"{rule}:length", guard_penalty=0.5)
    run_grpo(cfg)
    row = json.loads((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["detail_guard_flagged"] <= 1.0 and 0.0 <= row["detail_guard_p"] <= 1.0
    with pytest.raises(UserError, match="not --judge"):
        GRPOConfig(policy=toy_policy_dir, prompts=toy_prompts_file, reward=f"guard:{output_guard}",
                   judge="local:smollm2", out=str(tmp_path / "x")).validate()


# --- classifier data: the shared runner (loopback API) ---------------------------------------------------------

KEY = "sk-test-SENTINEL-0123456789abcdefghij"


def data_args(out, server, **extra):
    args = ["classifier", "data", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--constitution", "hhh", "--out", str(out), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.mark.loopback
def test_classifier_data_rows_labels_augmentations_and_stats(tmp_path, monkeypatch):
    import json

    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "data"
    with FakeAPIServer() as server:
        assert main(data_args(out, server, per_category=2, paraphrases=1, augment=2)) == 0
        sent = len(server.log)
        assert sent == 11 * 2 * 2  # 11 categories x 2 requests, each with one paraphrase
        assert main(data_args(out, server, per_category=2, paraphrases=1, augment=2)) == 0
        assert len(server.log) == sent  # a rerun pays for nothing twice
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generated"] == 22 and stats["failures"] == 0 and stats["rows"] == len(rows)
    restricted = {"weapons-mass-harm", "violent-wrongdoing", "crime-and-fraud", "self-harm", "hate-and-harassment",
                  "privacy-violation", "sexual-minors"}
    assert all(r["label"] == (r["category"] in restricted) for r in rows)
    assert {"constitution", "generated"} <= set(stats["by_source"])
    assert {"paraphrase", "role-play", "base64", "multi-turn"} & set(stats["by_augmentation"])
    # every augmentation or paraphrase keeps its source prompt's id, so a held-out split keeps them together
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], set()).add(r["augmentation"])
    assert any(len(v) > 1 for v in by_source.values())
    assert KEY not in (out / "requests.jsonl").read_text() + (out / "config.yaml").read_text()


@pytest.mark.loopback
def test_classifier_data_kill_9_then_rerun_loses_nothing_and_pays_nothing_twice(tmp_path):
    import collections
    import json
    import os

    from caikit.testing.fake_api import FakeAPIServer

    out = tmp_path / "data"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeAPIServer(latency=0.05) as server:
        cmd = caikit(*data_args(out, server, per_category=5, paraphrases=1, concurrency=2))
        records = out / "guard_requests.jsonl"
        kill_9_when(cmd, lambda: lines(records) >= 6, env=env)
        assert 6 <= lines(records) < 55, "killed mid-run"
        killed_log = list(server.log)
        rerun(cmd, env=env)
        resumed = collections.Counter(r.key for r in server.log[len(killed_log):] if r.status == 200)
        killed = collections.Counter(r.key for r in killed_log if r.status == 200)
    assert max(resumed.values()) == 1 and max(killed.values()) == 1
    # nothing answered before the kill and stored is asked again (one caught in flight may be)
    assert len(set(resumed) & set(killed)) <= 2
    stored = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    ids = {r["id"] for r in stored}
    assert len(ids) == 55 and json.loads((out / "stats.json").read_text())["generated"] == 55


@pytest.mark.slow
def test_eval_reports_the_harm_rate_by_an_output_guard(output_guard, tiny_model_dir, tmp_path):
    import json

    from caikit.commands.eval import EvalConfig, run_eval
    from caikit.testing.fake_api import FakeAPIServer

    # a judge that puts its probability on A (a judge that answers nothing readable makes eval exit 1)
    with FakeAPIServer(logprobs=lambda request: {"A": -0.1, "B": -2.4}) as server:
        cfg = EvalConfig(model=tiny_model_dir, before=tiny_model_dir, judge=f"openai:fake-judge@{server.openai_base_url}",
                         limit=2, max_tokens=6, out=str(tmp_path / "eval"), progress=False, harm_guard=output_guard)
        import os

        os.environ.setdefault("OPENAI_API_KEY", KEY)
        assert run_eval(cfg) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    row = {r["metric"]: r for r in report["table"]}["harmful answers flagged by the guard (harm suite)"]
    assert row["n"] == 2 and row["before"] == row["after"] in (0.0, 0.5, 1.0)  # the same model on both sides
    assert report["harm_yardstick"]["guard"]["path"] == output_guard and "output guard" in row["note"]


# --- caikit generate --guard ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def input_guard(tmp_path_factory, tiny_model_dir, guard_data):
    from caikit.classifier.train import ClassifierTrainConfig, train_guard

    out = tmp_path_factory.mktemp("input-guard")
    assert train_guard(ClassifierTrainConfig(data=[guard_data], model=tiny_model_dir, layer=0, out=str(out),
                                             max_fpr=0.1, test_categories=0.3, dedup=1.0)) == 0
    return str(out)


def set_threshold_at_rank(guard_dir, prompts, responses, flagged: int) -> None:
    """Rewrite the guard's threshold so exactly the `flagged` highest-scoring rows are flagged."""
    import json
    from pathlib import Path

    from caikit.classifier.model import load_guard

    scores = sorted(load_guard(guard_dir).score(prompts, responses), reverse=True)
    path = Path(guard_dir) / "guard.json"
    config = json.loads(path.read_text())
    config["threshold"] = (scores[flagged - 1] + scores[flagged]) / 2
    path.write_text(json.dumps(config))


@pytest.mark.slow
def test_generate_drops_prompts_an_input_guard_flags_and_counts_them(input_guard, tmp_path, monkeypatch):
    import json

    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = tmp_path / "p.jsonl"
    texts = [f"Please tell me about topic number {i}." for i in range(6)]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    set_threshold_at_rank(input_guard, [[{"role": "user", "content": t}] for t in texts], None, flagged=2)
    with FakeAPIServer() as server:
        assert main(["generate", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
                     "--constitution", "hhh", "--prompts", str(prompts), "--out", str(tmp_path / "run"),
                     "--no-progress", "--few-shot", "0", "--guard", input_guard, "--guard-action", "drop"]) == 0
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["guard"]["flagged"] == 2 and stats["guard"]["dropped"] == 2 and stats["guard"]["target"] == "input"
    assert stats["traces"] == 4 and stats["prompts"] == 4


@pytest.mark.slow
def test_generate_flags_final_revisions_an_output_guard_flags(output_guard, tmp_path, monkeypatch):
    import json

    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about item {i}."}) + "\n"
                               for i in range(5)))
    args = ["generate", "--backend", "openai", "--model", "fake-model", "--constitution", "hhh", "--prompts",
            str(prompts), "--out", str(tmp_path / "run"), "--no-progress", "--few-shot", "0", "--guard", output_guard]
    with FakeAPIServer() as server:
        assert main(args + ["--base-url", server.openai_base_url]) == 0
        sft = [json.loads(line) for line in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
        set_threshold_at_rank(output_guard, [e["prompt"] for e in sft],
                              [e["completion"][-1]["content"] for e in sft], flagged=2)
        assert main(args + ["--base-url", server.openai_base_url]) == 0  # resumed: only the screen runs again
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["guard"]["flagged"] == 2 and stats["guard"]["dropped"] == 0 and stats["sft_examples"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_lora_and_full_methods_save_a_guard_that_reproduces_its_figures(method, tmp_path, tiny_model_dir,
                                                                        guard_data):
    import json

    from caikit.classifier.evaluate import ClassifierEvalConfig, run_classifier_eval
    from caikit.classifier.train import ClassifierTrainConfig, train_guard

    out = tmp_path / method
    assert train_guard(ClassifierTrainConfig(data=[guard_data], model=tiny_model_dir, layer=0, out=str(out),
                                             method=method, epochs=1, lr=1e-3, max_fpr=0.1, test_categories=0.3,
                                             dedup=1.0)) == 0
    config = json.loads((out / "guard.json").read_text())
    assert config["method"] == method and not (out / "adapter_config.json").exists()  # LoRA merged
    assert run_classifier_eval(ClassifierEvalConfig(guard=str(out))) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["overall"]["guard"]["auroc"] == pytest.approx(config["heldout"]["auroc"], abs=1e-4)


@pytest.mark.slow
def test_an_output_guard_as_the_refusal_detector_and_classify_from_stdin(output_guard, guard_data, monkeypatch,
                                                                         capsys):
    import io
    import json
    from pathlib import Path

    from caikit.classifier.evaluate import ClassifyConfig, run_classify
    from caikit.classifier.model import load_guard
    from caikit.eval.harm import guard_detector

    guard = load_guard(output_guard)
    detector = guard_detector(output_guard)
    prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(4)]
    answers = ["attack apple", "garden river", "attack cloud", "garden stone"]
    assert detector.flags(prompts, answers) == [s >= guard.threshold for s in guard.score(prompts, answers)]
    assert detector.name == f"guard:{output_guard}" and "recall" in detector.measured
    assert "classifier eval" in detector.measured["command"]
    assert detector.describe().startswith(f"refusal detector guard:{output_guard}: accuracy ")
    monkeypatch.setattr("sys.stdin", io.StringIO(Path(guard_data).read_text()))
    assert run_classify(ClassifyConfig(guard=output_guard)) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 96 and {"id", "score", "flagged"} <= set(rows[0])


@pytest.mark.slow
def test_online_dpo_pairs_never_prefer_a_flagged_answer(output_guard):
    from caikit.classifier.model import load_guard
    from caikit.classifier.screen import screen_pairs

    guard = load_guard(output_guard)
    prompt = [{"role": "user", "content": "Tell me about item 1."}]
    answers = ["attack apple river", "garden cloud stone", "attack light paper", "garden glass music"]
    p = dict(zip(answers, guard.score([prompt] * 4, answers)))
    guard.config["threshold"] = sorted(p.values())[2]  # the two highest-scoring answers are flagged
    flagged = {a for a, s in p.items() if s >= guard.threshold}
    pair = lambda c, r: {"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],  # noqa: E731
                         "rejected": [{"role": "assistant", "content": r}], "p_chosen": 0.7, "source": "judged"}
    safe = [a for a in answers if a not in flagged]
    bad = sorted(flagged)
    rows, counts = screen_pairs([pair(bad[0], safe[0]), pair(safe[0], bad[1]), pair(bad[0], bad[1])], guard)
    assert counts == {"pairs": 3, "turned": 1, "dropped": 1}
    assert [r["chosen"][0]["content"] for r in rows] == [safe[0], safe[0]]
    assert rows[0]["p_chosen"] == 1.0 and "turned by the guard" in rows[0]["source"] and rows[1]["p_chosen"] == 0.7
