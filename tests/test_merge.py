"""`caikit merge`: shard run directories of generate and judge, put back together against an unsharded run.

Every run goes through the CLI against the loopback OpenAI server, whose answers depend only on the
request: a shard must produce exactly the records the unsharded run produced for its prompts.
"""

from __future__ import annotations

import contextlib
import io
import os
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from caikit.cli import main as cli_main
from caikit.shard import missing_shards, parse_shard, shard_of
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-MERGE-0123456789abcdef"
N_PROMPTS = 14
SHARDS = ("1/3", "2/3", "3/3")
VOLATILE = ("created_at", "backend", "usage")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_id(path: Path) -> dict[str, dict]:
    """Records by id, with the fields that say when/where they were made dropped."""
    rows = read_jsonl(path)
    out = {r["id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}
    assert len(out) == len(rows), f"duplicate ids in {path}"
    return out


def judge_logprobs(req):
    """A judge whose verdict depends on the two texts only: (A) wins when its text hashes odd."""
    shown_a = req.last_user_message.split("<response_a>\n", 1)[-1].split("\n</response_a>", 1)[0]
    p = 0.8 if sum(map(ord, shown_a)) % 2 else 0.3
    return {"A": math.log(p), "B": math.log(1 - p)}


def generate(server: FakeAPIServer, prompts: Path, out: Path, *extra: str) -> int:
    return cli_main(["generate", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
                     "--constitution", "hhh", "--prompts", str(prompts), "--out", str(out), "--few-shot", "0",
                     "--no-progress", *extra])


def judge(server: FakeAPIServer, gen: Path, out: Path, *extra: str) -> int:
    return cli_main(["judge", "--backend", "openai", "--model", "fake-judge", "--base-url", server.openai_base_url,
                     "--constitution", "hhh", "--from", str(gen), "--out", str(out), "--no-progress",
                     "--calibrate", "0", *extra])  # shards are merged here, the judge's quality is not at issue


def merge(*args) -> int:
    return cli_main(["merge", *map(str, args)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One unsharded generate run, the same prompts in 3 shards, their merge, and judge runs on it."""
    root = tmp_path_factory.mktemp("merge")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}: how do I pick lock number {i}?"}) + "\n"
                               for i in range(N_PROMPTS)))
    with pytest.MonkeyPatch.context() as mp, FakeAPIServer(logprobs=judge_logprobs) as server:
        mp.setenv("OPENAI_API_KEY", KEY)
        assert generate(server, prompts, root / "whole") == 0
        for s in SHARDS:
            assert generate(server, prompts, root / f"gen{s[0]}", "--shard", s) == 0
        assert merge(*(root / f"gen{s[0]}" for s in SHARDS), "--out", root / "merged") == 0
        # judge the merged generate run (it must read as a normal run), whole and in shards
        assert judge(server, root / "merged", root / "judge-whole") == 0
        for s in SHARDS:
            assert judge(server, root / "merged", root / f"judge{s[0]}", "--shard", s) == 0
        assert merge(*(root / f"judge{s[0]}" for s in SHARDS), "--out", root / "judge-merged") == 0
        # the same stage rerun on (a copy of) a merged directory finds everything done
        shutil.copytree(root / "merged", root / "merged-rerun")
        shutil.copytree(root / "judge-merged", root / "judge-merged-rerun")
        server.reset_log()
        assert generate(server, prompts, root / "merged-rerun") == 0
        assert judge(server, root / "merged", root / "judge-merged-rerun") == 0
        rerun_requests = len(server.log)
    return root, rerun_requests


def test_shard_split_is_a_disjoint_cover(runs):
    root, _ = runs
    whole = by_id(root / "whole" / "traces.jsonl")
    shards = [by_id(root / f"gen{s[0]}" / "traces.jsonl") for s in SHARDS]
    assert all(shards), "every shard got some prompts (else the test proves little)"
    assert sum(len(s) for s in shards) == len(whole) == N_PROMPTS
    assert set().union(*shards) == set(whole)
    for i, shard in enumerate(shards, 1):
        assert all(shard_of(t["prompt_id"], 3) == i for t in shard.values())
        assert all(whole[k] == t for k, t in shard.items())  # same request -> same trace


def test_generate_merge_equals_the_unsharded_run(runs):
    root, rerun_requests = runs
    merged = root / "merged"
    assert by_id(merged / "traces.jsonl") == by_id(root / "whole" / "traces.jsonl")
    assert by_id(merged / "sft.jsonl") == by_id(root / "whole" / "sft.jsonl")
    assert read_jsonl(merged / "failures.jsonl") == []
    report = json.loads((merged / "merge.json").read_text())
    assert report["counts"]["traces"] == N_PROMPTS and report["duplicates"] == 0 and report["conflicts"] == []
    assert report["missing_shards"] == [] and [i["shard"] for i in report["inputs"]] == list(SHARDS)
    assert sum(i["records_kept"] for i in report["inputs"]) == N_PROMPTS
    run = json.loads((merged / "run.json").read_text())
    shard_run = json.loads((root / "gen1" / "run.json").read_text())
    assert run["stage"] == "generate" and run["identity"] == shard_run["identity"]
    usage = json.loads((merged / "usage.json").read_text())
    shard_usage = [json.loads((root / f"gen{s[0]}" / "usage.json").read_text()) for s in SHARDS]
    assert usage["requests"] == sum(u["requests"] for u in shard_usage) == 3 * N_PROMPTS
    assert usage["prompt_tokens"] == sum(u["prompt_tokens"] for u in shard_usage)
    assert usage["prompts"] == usage["traces"] == N_PROMPTS and usage["failures"] == 0
    assert len(read_jsonl(merged / "requests.jsonl")) == 3 * N_PROMPTS
    assert rerun_requests == 0, "generate and judge rerun on the merged dirs requested nothing"
    rerun = root / "merged-rerun"
    assert by_id(rerun / "sft.jsonl") == by_id(merged / "sft.jsonl")
    rerun_usage = json.loads((rerun / "usage.json").read_text())
    del rerun_usage["requests_served_from_cache"], usage["requests_served_from_cache"]  # the rerun's: all of them
    assert rerun_usage == usage  # a rerun sums requests.jsonl to what the merge summed from the shards


def test_judge_shards_merge_to_the_unsharded_preferences(runs):
    root, _ = runs
    whole, merged = root / "judge-whole", root / "judge-merged"
    prefs = by_id(merged / "preferences.jsonl")
    assert prefs == by_id(whole / "preferences.jsonl") and len(prefs) >= N_PROMPTS // 2
    assert {p["chosen"][0]["content"] for p in prefs.values()} != {p["rejected"][0]["content"] for p in prefs.values()}
    assert by_id(merged / "judgments.jsonl") == by_id(whole / "judgments.jsonl")
    stats, whole_stats = (json.loads((d / "stats.json").read_text()) for d in (merged, whole))
    for k in ("pairs", "judged", "preferences", "failures", "ties", "position_consistency_rate", "mean_abs_margin",
              "revision_preferred_rate", "source", "method"):
        assert stats[k] == pytest.approx(whole_stats[k]), k
    assert json.loads((merged / "usage.json").read_text())["requests"] == N_PROMPTS * 2  # both orders, 1 principle
    rerun = root / "judge-merged-rerun"  # caikit judge rerun on the merged dir: derives the same files
    assert by_id(rerun / "preferences.jsonl") == prefs
    assert json.loads((rerun / "stats.json").read_text()) == stats


def test_judged_policy_samples_merge_with_their_policy_logs(runs, tmp_path, monkeypatch):
    root, _ = runs
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeAPIServer(logprobs=judge_logprobs) as server:
        def samples(out, *extra):
            return cli_main(["judge", "--pairs", "samples", "--n", "3", "--policy-backend", "openai",
                             "--policy-model", "fake-policy", "--policy-base-url", server.openai_base_url,
                             "--backend", "openai", "--model", "fake-judge", "--base-url", server.openai_base_url,
                             "--constitution", "hhh", "--prompts", str(root / "prompts.jsonl"), "--limit", "8",
                             "--out", str(out), "--no-progress", *extra])

        assert samples(tmp_path / "whole") == 0
        assert samples(tmp_path / "s1", "--shard", "1/2") == 0 and samples(tmp_path / "s2", "--shard", "2/2") == 0
    assert merge(tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m") == 0
    whole, merged = tmp_path / "whole", tmp_path / "m"
    assert by_id(merged / "preferences.jsonl") == by_id(whole / "preferences.jsonl") != {}
    assert len(read_jsonl(merged / "policy_requests.jsonl")) == 8  # one n=3 request per prompt
    usage, whole_usage = (json.loads((d / "usage.json").read_text()) for d in (merged, whole))
    assert usage["policy"]["requests"] == whole_usage["policy"]["requests"] == 8
    assert (usage["requests"], usage["pairs"], usage["judged"]) == (whole_usage["requests"], 24, 24)


def test_overlapping_shard_is_counted_not_doubled(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "m"
    assert merge(root / "gen1", root / "gen2", root / "gen3", root / "whole", "--out", out) == 0
    report = json.loads((out / "merge.json").read_text())
    assert report["duplicates"] == N_PROMPTS and report["conflicts"] == []
    assert by_id(out / "traces.jsonl") == by_id(root / "whole" / "traces.jsonl")
    assert len(read_jsonl(out / "sft.jsonl")) == N_PROMPTS
    assert report["counts"]["duplicate_requests"] == 3 * N_PROMPTS
    usage = json.loads((out / "usage.json").read_text())
    assert usage["prompts"] == N_PROMPTS  # an unsharded input stands for the whole prompt set
    assert usage["requests"] == 2 * 3 * N_PROMPTS  # what was paid for, the duplicated work included
    assert f"{N_PROMPTS} duplicates kept once, 0 conflicts" in capsys.readouterr().err


def test_conflicting_record_is_reported_and_the_first_copy_kept(runs, tmp_path, capsys):
    root, _ = runs
    copy = tmp_path / "gen1-edited"
    shutil.copytree(root / "gen1", copy)
    traces = read_jsonl(copy / "traces.jsonl")
    original = traces[0]["final_revision"]
    traces[0]["final_revision"] = "something else entirely"
    (copy / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    out = tmp_path / "m"
    assert merge(root / "gen1", copy, root / "gen2", root / "gen3", "--out", out) == 0
    report = json.loads((out / "merge.json").read_text())
    assert report["duplicates"] == len(traces)
    assert report["conflicts"] == [{"id": traces[0]["id"], "kept": str(root / "gen1"), "dropped": str(copy),
                                    "fields": ["final_revision"]}]
    assert by_id(out / "traces.jsonl")[traces[0]["id"]]["final_revision"] == original
    err = capsys.readouterr().err
    assert f"conflict: {traces[0]['id']}" in err and str(root / "gen1") in err and str(copy) in err


def test_missing_shard_is_reported(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "m"
    assert merge(root / "gen1", root / "gen3", "--out", out) == 1  # a partial merge is not "done"
    assert json.loads((out / "merge.json").read_text())["missing_shards"] == ["2/3"]
    assert "missing shards 2/3" in capsys.readouterr().err
    assert missing_shards(["1/2", "1/3"]) is None and missing_shards(["", "2/4"]) == []
    assert parse_shard("2 / 4") == (2, 4) and parse_shard("") is None


def _copy_with_identity(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    run = json.loads((dst / "run.json").read_text())
    run["identity"].update(changes)
    (dst / "run.json").write_text(json.dumps(run))
    return dst


def test_mismatched_inputs_are_refused_with_one_line(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "m"
    other = _copy_with_identity(root / "gen2", tmp_path / "rounds2", rounds=2)
    cases = [
        ([root / "gen1", other], [str(other), "rounds = 2 vs 1"]),
        ([root / "gen1", root / "judge2"], [str(root / "judge2"), "'judge' run"]),
        ([root / "gen1", root / "gen1"], ["given twice"]),
        ([root / "gen1", tmp_path / "nothing"], ["nothing: not a directory"]),
        ([root / "gen1", root], [f"{root}: not a caikit generate or judge run"]),
    ]
    for dirs, needles in cases:
        assert merge(*dirs, "--out", out) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert all(n in err for n in needles), (needles, err)
        assert not out.exists()
    margin = tmp_path / "margin"
    shutil.copytree(root / "judge2", margin)
    stats = json.loads((margin / "stats.json").read_text())
    (margin / "stats.json").write_text(json.dumps({**stats, "min_margin": 0.2}))
    assert merge(root / "judge1", margin, "--out", out) == 2
    assert "min_margin = 0.2 vs 0.0" in capsys.readouterr().err and not out.exists()


def test_out_is_replaced_whole_or_left_alone(runs, tmp_path, capsys):
    root, _ = runs
    shards = [root / f"gen{s[0]}" for s in SHARDS]
    out = tmp_path / "m"
    assert merge(*shards[:2], "--out", out, "--allow-partial") == 0
    assert merge(*shards, "--out", out) == 0  # an earlier merge is replaced
    assert len(read_jsonl(out / "traces.jsonl")) == N_PROMPTS
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shards[2], corrupt)
    lines = (corrupt / "traces.jsonl").read_text().splitlines(keepends=True)
    (corrupt / "traces.jsonl").write_text(lines[0][:-10] + "\n" + "".join(lines[1:]))  # a broken line mid-file
    capsys.readouterr()
    assert merge(*shards[:2], corrupt, "--out", out) == 2
    assert "traces.jsonl:1: corrupt JSON line" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier merge untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt", "m"]  # no temporary directory left
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    assert merge(*shards, "--out", plain) == 2
    assert "not empty, nor an earlier caikit merge" in capsys.readouterr().err
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]
    assert merge(*shards, "--out", shards[0] / "sub") == 2
    assert "overlaps the input" in capsys.readouterr().err


# -- fuzzed inputs: a clear error or a whole merge, never a traceback, never a half-replaced OUT --------------

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.floats(allow_nan=False),
                        st.text(max_size=6), st.lists(st.integers(0, 3), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


@st.composite
def damage(draw, data: bytes, name: str) -> bytes:
    """`data` truncated, garbled, or with one field of one record retyped or dropped."""
    kind = draw(st.sampled_from(["truncate", "garble", "field"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "garble":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i + draw(st.integers(0, 8)):]
    lines = data.decode().splitlines() if name.endswith(".jsonl") else [data.decode()]
    if not lines:
        return data
    n = draw(st.integers(0, len(lines) - 1))
    record = yaml.safe_load(lines[n]) if name.endswith(".yaml") else json.loads(lines[n])
    target = record["identity"] if name == "run.json" and draw(st.booleans()) else record
    if not target:
        return data
    field = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        del target[field]
    else:
        target[field] = draw(JSON_VALUES)
    lines[n] = yaml.safe_dump(record) if name.endswith(".yaml") else json.dumps(record)
    return ("\n".join(lines) + "\n").encode()


@settings(max_examples=int(os.environ.get("CAIKIT_FUZZ_EXAMPLES", 30)), deadline=None,
          derandomize=not os.environ.get("CAIKIT_FUZZ_EXAMPLES"), database=None)
@given(st.data())
def test_damaged_inputs_give_one_line_errors_and_leave_out_alone(runs, data):
    root, _ = runs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = [shutil.copytree(root / f"gen{s[0]}", tmp / f"gen{s[0]}") for s in SHARDS]
        out = shutil.copytree(root / "merged", tmp / "out")  # an earlier merge, to be replaced or left alone
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        shard = data.draw(st.sampled_from(shards))
        # (the hidden .NAME.index files are caches rebuilt from the JSONL: tests/test_scale.py damages those)
        victim = data.draw(st.sampled_from(sorted(p for p in shard.iterdir()
                                                  if p.is_file() and not p.name.startswith("."))))
        victim.write_bytes(data.draw(damage(victim.read_bytes(), victim.name)))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = merge(*shards, "--out", out)
        assert "Traceback" not in err.getvalue()
        if rc == 2:
            assert err.getvalue().count("\n") == 1, err.getvalue()
            assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        else:
            assert rc == 0 and json.loads((out / "merge.json").read_text())["stage"] == "generate"
            kept = json.loads((out / "stats.json").read_text())
            usable = [t for t in read_jsonl(out / "traces.jsonl") if (kept.get("keep_truncated") or not t.get("truncated"))
                      and (kept.get("keep_degenerate") or not t.get("degenerate"))]
            assert len(read_jsonl(out / "sft.jsonl")) == len(usable)  # truncated or degenerate: counted, not used
        assert sorted(p.name for p in tmp.iterdir()) == ["gen1", "gen2", "gen3", "out"]
