"""Optional: caikit against a real llama.cpp server -- llama-cpp-python's OpenAI-compatible server on 127.0.0.1
serving the embedded SmolLM2 GGUF: `caikit probe` -> `generate` -> `judge` -> `export`, then (with TRL) what
TRL's SFTTrainer trains on in the SFT export of multi-turn hh-rlhf prompts.

Skipped unless `pip install 'llama-cpp-python[server]'` has been done (it compiles llama.cpp) and the GGUF is
installed. Run with -s to see the probe's output and the token shares.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from caikit.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

PROMPTS = 4
MODEL = "smollm2"  # llama-cpp-python answers to any model name; caikit records this one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from caikit.errors import UserError
    from caikit.models import embedded_gguf_path

    try:
        gguf = embedded_gguf_path()
    except UserError as e:
        pytest.skip(str(e))
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        # as a user starts it (log-probs come back without --logits_all); the alias makes /v1/models list MODEL
        server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                                   MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                                   "--n_threads", "2"], stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base_url + "/models", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama-cpp-python's server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_probe_generate_judge_export_against_llama_cpp(llama_server, shared_data, tmp_path, capsys, monkeypatch,
                                                        tiny_model_dir):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")  # the server takes any key
    assert main(["probe", "--base-url", llama_server, "--model", MODEL]) == 0
    probe_output = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + probe_output)
    # what llama-cpp-python 0.3.36 does (requests at once is left out: the ramp's figure varies from probe to probe)
    for line in ("model listed          yes", "honours n             no", "log-probs             yes"):
        assert line in probe_output, line

    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        multi_turn = [r for line in fh if (r := json.loads(line))["chosen"].count("\n\nHuman:") >= 3
                      and len(r["chosen"]) < 1500]
    prompts = tmp_path / "hh.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in multi_turn[:PROMPTS]))
    endpoint = ["--backend", "openai", "--model", MODEL, "--base-url", llama_server, "--timeout", "300",
                "--no-progress"]
    gen, judge = tmp_path / "gen", tmp_path / "judge"
    # kept even when cut or degenerate: what is measured here is the layout, not SmolLM2-135M's revisions
    assert main(["generate", *endpoint, "--prompts", str(prompts), "--max-tokens", "96", "--out", str(gen),
                 "--keep-truncated", "--keep-degenerate"]) == 0
    # SmolLM2-135M as judge is near chance: its quality gate may stop it (exit 3), so the run goes on past it
    # and the gate's verdict must travel into the card
    assert main(["judge", *endpoint, "--from", str(gen), "--out", str(judge), "--keep-truncated",
                 "--keep-degenerate", "--allow-weak-judge"]) == 0
    gate = json.loads((judge / "gate.json").read_text())
    probe = json.loads((gen / "probe.json").read_text())
    stats = {"generate": json.loads((gen / "stats.json").read_text()),
             "judge": json.loads((judge / "stats.json").read_text())}
    for run in (gen, judge):
        assert main(["export", str(run), "--format", "jsonl"]) == 0
    card = (gen / "export" / "sft" / "README.md").read_text()
    assert "| endpoint | self-hosted OpenAI-compatible server |" in card and "| server | probed " in card
    assert (judge / "export" / "preferences" / "README.md").exists() or stats["judge"]["preferences"] == 0
    if stats["judge"]["preferences"]:
        assert f"| quality gate | **{gate['status']}** " in (judge / "export" / "preferences" / "README.md").read_text()

    shares = {}
    if _has_trl():
        from datasets import load_dataset

        from caikit.testing import trl_consumer

        for layout in ("prompt-completion", "messages"):
            assert main(["export", str(gen), "--format", "jsonl", "--sft-layout", layout,
                         "--out", str(tmp_path / layout)]) == 0
            data = load_dataset("json", data_files=str(tmp_path / layout / "sft" / "train.jsonl"), split="train",
                                cache_dir=str(tmp_path / "hf-cache"))
            trainer = trl_consumer.sft_trainer(tiny_model_dir, data, tmp_path / f"trl-{layout}")
            shares[layout] = trl_consumer.sft_token_share(trainer, data.to_list())
        assert shares["prompt-completion"].share == shares["prompt-completion"].coverage == 1.0
    with capsys.disabled():
        print(f"probe.json: {json.dumps({k: probe[k] for k in ('honours_n', 'logprobs', 'top_logprobs', 'slots', 'slots_from', 'tokens_per_second')})}")
        print(f"generate stats: {json.dumps(stats['generate'])}")
        print(f"judge gate: {gate['status']}: {gate['verdict']}")
        print(f"judge stats: {json.dumps({k: stats['judge'].get(k) for k in ('method', 'pairs', 'judged', 'preferences', 'ties', 'position_consistency_rate', 'failures', 'skipped')})}")
        for layout, share in shares.items():
            print(f"SFT export, {layout}: {share.share:.1%} of the {share.trained} tokens TRL trains on are the "
                  f"revision's ({share.coverage:.1%} of the revision's tokens trained)")


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None
