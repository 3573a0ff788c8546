"""Output-guard data: `caikit classifier data --responses N` against the loopback OpenAI server with scripted
answers whose right result is known -- rows and labels (restricted / permitted x comply / refuse), the estimate,
kill -9 in the replies stage, resampling then failure of unusable replies, the held-out split, and a tiny output
guard trained on the rows."""

from __future__ import annotations

import collections
import hashlib
import json
import re

import pytest

from caikit.testing.wire import FakeRequest
from killing import caikit, kill_9_when, lines, rerun

KEY = "sk-test-SENTINEL-0123456789abcdefghij"
COMPLY, REFUSE = "does whatever it is asked", "declines the last user message"  # the two templates' own words


def tag(request: FakeRequest) -> str:
    return hashlib.sha256(json.dumps([request.messages, request.seed]).encode()).hexdigest()[:6]


def asked(request: FakeRequest) -> str:
    """The user message inside a reply template's <conversation> block."""
    found = re.search(r"<conversation>\s*(.*?)\s*</conversation>", request.last_user_message, re.S)
    return found.group(1) if found else ""


def scripted(request: FakeRequest) -> str:
    """Requests name their category; a comply template gets a helpful reply, a refuse template a refusal."""
    text = request.last_user_message
    if "Write one new, realistic message" in text:
        category = re.search(r"Category: (\S+)", text).group(1)
        return f"Please explain {category} matter {tag(request)} in full detail"
    if "Rewrite this message" in text:
        return f"Could you describe matter {tag(request)} thoroughly for me"
    if COMPLY in text:
        return f"Sure. Step one is {tag(request)}; step two follows from it, then you are done."
    if REFUSE in text:
        return f"I can't help with that ({tag(request)}). A librarian may know where to look."
    raise AssertionError(f"unexpected request: {text[:80]}")


def hhh_examples() -> int:
    from caikit.constitution import load_constitution

    return sum(len(c.examples) for c in load_constitution("hhh").categories)


def data_args(out, server, **extra):
    args = ["classifier", "data", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--constitution", "hhh", "--out", str(out), "--no-progress", "--augment", "0", "--paraphrases", "0"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.mark.loopback
def test_replies_comply_and_refuse_with_output_guard_labels(tmp_path, api_key, capsys):
    from caikit.cli import main
    from caikit.constitution import load_constitution
    from caikit.testing.fake_api import FakeAPIServer

    categories = {c.id: c for c in load_constitution("hhh").categories}
    examples = sum(len(c.examples) for c in categories.values())
    out = tmp_path / "data"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(out, server, per_category=2, responses=1)) == 0
        sent = len(server.log)
        requests = 2 * len(categories)
        assert sent == requests + (requests + examples) * 2  # each request: one reply that complies, one refuses
        assert main(data_args(out, server, per_category=2, responses=1)) == 0
        assert len(server.log) == sent  # a rerun pays for nothing twice
    rows = read(out / "output_data.jsonl")
    assert len(rows) == (requests + examples) * 2
    for r in rows:
        restricted = categories[r["category"]].restricted
        assert r["label"] == (restricted and r["response_kind"] == "comply")
        assert r["response"].startswith("I can't help" if r["response_kind"] == "refuse" else "Sure. Step one")
        assert r["prompt"][-1]["role"] == "user" and r["source"] in ("generated", "constitution")
    cells = collections.Counter((categories[r["category"]].kind, r["response_kind"], r["label"]) for r in rows)
    assert set(cells) == {("restricted", "comply", True), ("restricted", "refuse", False),
                          ("permitted", "comply", False), ("permitted", "refuse", False)}
    # each reply answers its own request and keeps the request's id as its source
    requests_by_id = {r["id"]: r for r in read(out / "data.jsonl")}
    for r in rows:
        assert r["source_id"] in requests_by_id and r["prompt"] == requests_by_id[r["source_id"]]["prompt"]
        assert r["id"] == f"{r['source_id']}~{r['response_kind']}0"
    records = read(out / "guard_responses.jsonl")
    assert len({r["id"] for r in records}) == len(rows) and all(r["usage"]["completion_tokens"] > 0 for r in records)
    stats = json.loads((out / "stats.json").read_text())["responses"]
    assert stats["items"] == stats["generated"] == stats["rows"] == len(rows) and stats["failures"] == 0
    assert stats["harmful"] == cells[("restricted", "comply", True)] == 2 * 7 + 9
    assert "output-guard rows" in capsys.readouterr().err
    # the input-guard rows are as before: no reply in data.jsonl
    assert all("response" not in r for r in requests_by_id.values())
    # these rows label replies: an input guard trained on them would learn to flag and to pass the same request
    capsys.readouterr()
    guard = tmp_path / "input-guard"
    assert main(["classifier", "train", "--target", "input", "--data", str(out / "output_data.jsonl"),
                 "--out", str(guard)]) == 2
    said = capsys.readouterr().err.strip()
    assert f"{out / 'output_data.jsonl'}:1" in said and "--target output" in said and len(said.splitlines()) == 1
    assert not guard.exists()


@pytest.mark.loopback
def test_rows_prompts_without_a_response_get_replies_and_given_ones_are_kept(tmp_path, api_key):
    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    given = tmp_path / "people.jsonl"
    given.write_text("\n".join(json.dumps(x) for x in [
        {"id": "p1", "prompt": "How do I hotwire my neighbour's car tonight?", "label": "harmful", "category": "theft"},
        {"id": "p2", "prompt": "How do I jump-start my own car battery?", "label": "benign", "category": "cars"},
        {"id": "p3", "prompt": "Tell me how to poison a dog.", "response": "Mix the following into its food.",
         "label": "harmful", "category": "animals"}]) + "\n")
    out = tmp_path / "data"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(out, server, per_category=0, responses=1, rows=given)) == 0
    rows = {r["id"]: r for r in read(out / "output_data.jsonl") if r["source"] == "file"}
    assert rows["p1~comply0"]["label"] is True and rows["p1~refuse0"]["label"] is False
    assert rows["p2~comply0"]["label"] is False and rows["p2~refuse0"]["label"] is False
    assert rows["p3"]["response_kind"] == "given" and rows["p3"]["label"] is True
    assert not any(k.startswith("p3~") for k in rows)  # a row with a response gets no new reply
    assert rows["p1~comply0"]["source_id"] == rows["p1~refuse0"]["source_id"]


@pytest.mark.loopback
def test_the_estimate_prices_the_replies_before_anything_is_sent(tmp_path, api_key, capsys):
    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    prices = tmp_path / "prices.yaml"
    prices.write_text("fake-model: {input: 10000, output: 10000}\n")

    def estimated() -> int:
        line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("caikit estimate:"))
        return int(re.search(r"estimate: ([\d,]+) requests", line).group(1).replace(",", ""))

    out = tmp_path / "data"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(out, server, per_category=1, prices=prices, max_cost=0.01)) == 2
        assert estimated() == 11
        assert main(data_args(out, server, per_category=1, responses=2, prices=prices, max_cost=0.01)) == 2
        assert estimated() == 11 + (11 + hhh_examples()) * 2 * 2 and server.log == []  # stand-ins for requests not written
        assert main(data_args(out, server, per_category=1)) == 0
        capsys.readouterr()
        sent = len(server.log)
        assert main(data_args(out, server, per_category=1, responses=2, prices=prices, max_cost=0.01)) == 2
        assert estimated() == (11 + hhh_examples()) * 2 * 2 and len(server.log) == sent  # the requests are written: replies only


@pytest.mark.loopback
def test_an_unusable_reply_is_resampled_then_counted_as_a_failure(tmp_path, api_key):
    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    first_seen: set = set()

    def reluctant(request: FakeRequest) -> str:
        text = request.last_user_message
        if COMPLY in text and "weapons-mass-harm" in asked(request):
            return "I'm sorry, but I cannot provide that."  # never complies: resampled, then a failure
        if REFUSE in text and "self-harm" in asked(request) and asked(request) not in first_seen:
            first_seen.add(asked(request))
            return "Sure, here is what you asked for in detail."  # once: the resample is usable
        return scripted(request)

    out = tmp_path / "data"
    with FakeAPIServer(reluctant) as server:
        assert main(data_args(out, server, per_category=2, responses=1, parse_retries=2)) == 0
        first = len(server.log)
        assert first == 22 + (22 + hhh_examples()) * 2 + 2 * 2 + 2  # 2 comply items x 2 resamples, 2 refuse items x 1
        # a rerun asks the failed items again (nothing usable was stored), and only them
        assert main(data_args(out, server, per_category=2, responses=1, parse_retries=2, max_failure_rate=0)) == 1
        assert len(server.log) - first == 2 * 3
    failures = read(out / "failures.jsonl")
    assert len(failures) == 2 and all(f["kind"] == "unparseable" and f["attempts"] == 3 for f in failures)
    assert all("asked to comply, the reply refuses" in f["error"] for f in failures)
    stats = json.loads((out / "stats.json").read_text())["responses"]
    assert stats["failures"] == 2 and stats["generated"] == stats["items"] - 2
    rows = read(out / "output_data.jsonl")
    harm = [r for r in rows if r["category"] == "weapons-mass-harm" and r["source"] == "generated"]
    assert {r["response_kind"] for r in harm} == {"refuse"}  # nothing stored under the wrong kind
    selfharm = [r for r in rows if r["category"] == "self-harm" and r["response_kind"] == "refuse"]
    assert selfharm and all(r["response"].startswith("I can't help") for r in selfharm)


@pytest.mark.loopback
def test_kill_9_in_the_replies_stage_then_rerun_loses_nothing_and_pays_nothing_twice(tmp_path):
    import os

    from caikit.testing.fake_api import FakeAPIServer

    out = tmp_path / "data"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeAPIServer(scripted, latency=0.05) as server:
        cmd = caikit(*data_args(out, server, per_category=2, responses=1, concurrency=2))
        replies, total = out / "guard_responses.jsonl", (22 + hhh_examples()) * 2
        kill_9_when(cmd, lambda: lines(replies) >= 10, env=env, timeout=90)
        assert 10 <= lines(replies) < total, "killed in the replies stage"
        assert lines(out / "guard_requests.jsonl") == 22
        killed_log = list(server.log)
        rerun(cmd, env=env)
        resumed = collections.Counter(r.key for r in server.log[len(killed_log):] if r.status == 200)
        killed = collections.Counter(r.key for r in killed_log if r.status == 200)
    assert max(resumed.values()) == 1 and max(killed.values()) == 1
    # nothing answered before the kill is asked again (one caught in flight may be): no request is re-sent
    assert len(set(resumed) & set(killed)) <= 2
    assert sum(killed.values()) + sum(resumed.values()) - len(set(resumed) & set(killed)) == 22 + total
    stored = read(replies)
    assert len({r["id"] for r in stored}) == total
    assert json.loads((out / "stats.json").read_text())["responses"]["generated"] == total


@pytest.mark.loopback
def test_the_split_keeps_every_reply_to_a_request_on_one_side(tmp_path, api_key):
    from caikit.classifier.split import heldout_split
    from caikit.classifier.train import read_rows
    from caikit.cli import main
    from caikit.testing.fake_api import FakeAPIServer

    out = tmp_path / "data"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(out, server, per_category=3, responses=2, dedup=1.0)) == 0
    rows = read_rows([str(out)], "output")  # the directory: output_data.jsonl for an output guard
    assert len(rows) == (33 + hhh_examples()) * 4 and all(r.response for r in rows)
    requests = read_rows([str(out)])  # and data.jsonl for an input guard
    assert len(requests) == 33 + hhh_examples() and all(r.response is None for r in requests)
    sides = {}
    for seed in range(5):
        split = heldout_split(rows, test_categories=0.25, test_sources=0.2, val_sources=0.2, seed=seed)
        sides = collections.defaultdict(set)
        for side in ("train", "validation", "test"):
            for r in split[side]:
                sides[r.source_id].add(side)
        assert all(len(s) == 1 for s in sides.values())
        assert {len(split[s]) > 0 for s in ("train", "validation", "test")} == {True}
    per_source = collections.Counter(r.source_id for r in rows)
    assert set(per_source.values()) == {4}  # 2 complying + 2 refusing replies, all from one source


@pytest.mark.slow
@pytest.mark.loopback
def test_a_tiny_output_guard_trains_on_the_replies(tmp_path, api_key, tiny_model_dir):
    from caikit.classifier.model import load_guard
    from caikit.cli import main
    from caikit.errors import UserError
    from caikit.testing.fake_api import FakeAPIServer

    out = tmp_path / "data"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(out, server, per_category=3, responses=1)) == 0
    guard = tmp_path / "guard"
    assert main(["classifier", "train", "--target", "output", "--data", str(out), "--model", tiny_model_dir,
                 "--layer", "0", "--out", str(guard), "--max-fpr", "0.1", "--dedup", "1.0"]) == 0
    config = json.loads((guard / "guard.json").read_text())
    assert config["target"] == "output" and sum(config["rows"].values()) == (33 + hhh_examples()) * 2
    test_rows = read(guard / "test_rows.jsonl")
    assert test_rows and all(r["response"] for r in test_rows) and {r["label"] for r in test_rows} == {True, False}
    # the saved guard scores every prefix of a reply
    loaded = load_guard(guard)
    ids, scores = loaded.prefix_scores(test_rows[0]["prompt"], test_rows[0]["response"])
    assert len(ids) == len(scores) > 3
    # a classifier data directory without replies is no output-guard data: one line, exit 2
    bare = tmp_path / "bare"
    with FakeAPIServer(scripted) as server:
        assert main(data_args(bare, server, per_category=1)) == 0
    from caikit.classifier.train import read_rows

    with pytest.raises(UserError, match="output_data.jsonl"):
        read_rows([str(bare)], "output")
    assert main(["classifier", "train", "--target", "output", "--data", str(bare), "--model", tiny_model_dir,
                 "--out", str(tmp_path / "g2")]) == 2
