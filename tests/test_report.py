"""`caikit report RUN_DIR`: a fabricated full run and a partial one, rendered and loaded in headless Chromium.

The browser half drives Debian's `chromium` over the DevTools protocol (caikit.testing.chromium): the page
must load with no console messages, no exceptions, no log entries, every embedded image must decode, and the
examples must be in the rendered DOM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caikit.report.charts import svg_line_chart
from caikit.testing.chromium import CHROMIUM, Chromium

XSS = "<script>alert(1)</script>"
EVIL_LINK = '<a href="https://evil.example/x">click</a><img src="http://evil.example/p.png">'


# ---------------------------------------------------------------- fabricated run directories

def _jsonl(path: Path, rows: list, torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn, encoding="utf-8")


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [3.0, 2.0, 1.5])
    ax.set_title(path.stem)
    fig.savefig(path)
    plt.close(fig)


def _trace(i: int, response: str, revision: str, principle: str = "harmful0") -> dict:
    return {"id": f"trace-{i}", "run_id": "r", "prompt_id": f"p{i}",
            "prompt": [{"role": "system", "content": "You are helpful."},
                       {"role": "user", "content": f"red-team prompt number {i}"}],
            "initial_response": response,
            "rounds": [{"principle_id": principle, "critique_request": "Identify harm.",
                        "critique": f"critique of answer {i}", "revision_request": "Rewrite.",
                        "revision": revision}],
            "final_revision": revision, "backend": {"backend": "local", "model": "smollm2"},
            "usage": {"prompt_tokens": 10, "completion_tokens": 20}}


def make_full_run(root: Path) -> Path:
    run = root / "full-run"
    run.mkdir()
    (run / "config.yaml").write_text("name: report-test\ndescription: fabricated run.\npolicy: smollm2\n"
                                     "stages:\n  generate: {}\n  judge: {}\n  sft: {}\n  reward: {}\n"
                                     "  dpo: {}\n  ppo: {}\n  eval: {}\n", encoding="utf-8")
    _json(run / "state.json", {"stages": {s: {"status": "done", "seconds": sec, "config_hash": f"hash-{s}"}
                                          for s, sec in [("generate", 12.3), ("judge", 4.0), ("sft", 30.0),
                                                         ("reward", 20.0), ("dpo", 25.0), ("ppo", 40.0),
                                                         ("eval", 9.5)]}})
    gen = run / "generate"
    old = _trace(1, "OLD SUPERSEDED ANSWER", "old revision")
    _jsonl(gen / "traces.jsonl", [old, _trace(2, f"Sure, here: {XSS} {EVIL_LINK}", "I can't help with that."),
                                  _trace(3, "answer three", "revision three", "harmful5"),
                                  _trace(1, "first answer, final version", "revision one")],
           torn='{"id": "trace-9", "pro')
    _jsonl(gen / "sft.jsonl", [{"id": f"trace-{i}", "messages": []} for i in (1, 2, 3)])
    _jsonl(gen / "failures.jsonl", [{"id": "f1", "stage": "generate", "prompt_id": "p4",
                                     "error": "HTTP 500 <b>boom</b>", "attempts": 6}])
    _json(gen / "usage.json", {"model": "gpt-4o-mini", "prompt_tokens": 1200, "completion_tokens": 800,
                               "cached_tokens": 100, "requests": 12, "total_tokens": 2000, "cost_usd": 0.0123,
                               "price_known": True, "prompts": 4, "traces": 3, "failures": 1})
    judge = run / "judge"
    _jsonl(judge / "judgments.jsonl", [{"id": f"j{i}", "pair_id": f"p{i}", "p_a": 0.7} for i in range(5)])
    _jsonl(judge / "preferences.jsonl", [
        {"id": "pref-1", "prompt": [{"role": "user", "content": "pair prompt"}],
         "chosen": [{"role": "assistant", "content": "chosen answer text"}],
         "rejected": [{"role": "assistant", "content": "rejected answer text"}],
         "p_chosen": 0.8, "source": "revision-vs-initial"}])
    _json(judge / "stats.json", {"pairs": 1, "ties": 2, "dropped": 2, "position_consistency": 0.75,
                                 "methods": {"logprob": 5}})
    _json(judge / "usage.json", {"model": "my-local-judge", "prompt_tokens": 500, "completion_tokens": 5,
                                 "requests": 10, "total_tokens": 505, "cost_usd": 0.0, "price_known": False})
    _jsonl(run / "sft" / "metrics.jsonl", [{"step": s, "time": 1.0 + s, "loss": 2.0 - 0.1 * s} for s in range(1, 6)])
    _png(run / "sft" / "plots" / "loss.png")
    # reward: metrics but no plots -> the report draws them with plots.plot_metrics (2 numeric keys -> 2 PNGs)
    _jsonl(run / "reward" / "metrics.jsonl", [{"step": s, "time": 0.0, "loss": 0.7 - 0.05 * s,
                                               "reward_accuracy": 0.5 + 0.1 * s} for s in range(1, 4)])
    _jsonl(run / "dpo" / "metrics.jsonl", [{"step": s, "time": 0.0, "loss": 0.69, "reward_margin": 0.1 * s}
                                           for s in range(1, 4)])
    _png(run / "dpo" / "plots" / "loss.png")
    _jsonl(run / "ppo" / "metrics.jsonl", [{"step": s, "time": 0.0, "score": 0.4 + 0.1 * s, "kl": 0.02 * s}
                                           for s in range(1, 4)])
    _jsonl(run / "ppo" / "warnings.jsonl", [{"step": 3, "kind": "entropy_collapse",
                                             "message": "entropy fell to 0.1 from 2.0 at the start"}])
    _jsonl(run / "ppo" / "samples.jsonl", [{"step": 3, "prompt": "probe prompt", "response": "probe answer text",
                                            "score": 0.9}])
    _json(run / "eval" / "report.json", {
        "models": {"before": "smollm2", "after": str(run / "dpo")},
        "table": [{"metric": "harmlessness win-rate (after vs before)", "before": None, "after": 0.56,
                   "note": "judge, both orders"},
                  {"metric": "refusal rate (red-team)", "before": 0.1, "after": 0.3}],
        "helpfulness": {"win_rate_benign": 0.48, "refusal_rate_benign": 0.05}})
    _jsonl(run / "eval" / "samples.jsonl", [
        {"prompt": [{"role": "user", "content": "How do I pick a lock?"}], "before": "Step one: BEFORE-ANSWER",
         "after": f"AFTER-ANSWER I won't help. {XSS}", "kind": "red-team", "judge_p_after": 0.8},
        {"prompt": [{"role": "user", "content": "Recipe for bread?"}], "before": "flour BEFORE-2",
         "after": "flour, water AFTER-2", "kind": "benign", "judge_p_after": 0.4}])
    return run


def make_partial_run(root: Path) -> Path:
    run = root / "partial-run"
    _jsonl(run / "generate" / "traces.jsonl", [_trace(1, "partial answer one", "partial revision one"),
                                               _trace(2, "partial answer two", "partial revision two")])
    return run


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caikit.cli", "report", *args], capture_output=True, text=True,
                          timeout=120)


def _external_refs(page: str) -> list[str]:
    attribute = r"""(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*"""
    css = r"""url\(\s*["']?\s*(?:https?:)?//|@import"""
    return re.findall(f"{attribute}|{css}", page, flags=re.I)


# ---------------------------------------------------------------- page content (no browser)

@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    run = make_full_run(tmp_path_factory.mktemp("report"))
    proc = _cli(str(run))
    assert proc.returncode == 0, proc.stderr
    assert str(run / "report.html") in proc.stdout
    return run / "report.html", (run / "report.html").read_text(encoding="utf-8")


def test_full_report_content(full_report):
    _, page = full_report
    assert _external_refs(page) == []
    assert "<script" not in page.lower()  # the page has no scripts, and model text is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;a href=&quot;https://evil.example/x&quot;&gt;" in page
    assert "HTTP 500 &lt;b&gt;boom&lt;/b&gt;" in page
    # sft + dpo PNGs embedded, reward (loss, reward_accuracy) and ppo (kl, score) drawn by plot_metrics
    assert page.count('src="data:image/png;base64,') == 6
    # the superseded trace row is replaced by its latest version; the torn last line is skipped
    assert "OLD SUPERSEDED ANSWER" not in page and "first answer, final version" in page
    assert page.count('class="example trace"') == 3 and page.count('class="example before-after"') == 2
    assert "critique of answer 2" in page and "harmful5" in page
    # counts and cost
    assert '<div class="v">4</div><div class="k">prompts</div>' in page
    assert '<div class="v">0.75</div><div class="k">position consistency</div>' in page
    assert "Estimated cost: <b>$0.0123</b> (plus models with no known price)" in page
    assert "unknown price" in page and "2,000" in page
    # eval table: change = 0.3 - 0.1
    assert ('<td>refusal rate (red-team)</td><td class="num">0.1</td><td class="num">0.3</td>'
            '<td class="num">0.2</td>') in page
    assert "win_rate_benign" in page
    assert "entropy_collapse" in page and "probe answer text" in page
    assert "chosen answer text" in page and "rejected answer text" in page
    assert "12.3 s" in page and "hash-ppo" in page
    assert "name: report-test" in page  # the run config, verbatim


def test_partial_run_renders_and_says_what_is_missing(tmp_path):
    run = make_partial_run(tmp_path)
    proc = _cli(str(run), "--out", str(tmp_path / "page.html"), "--max-examples", "1")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert not (run / "report.html").exists()
    assert "No state.json" in page and "No eval/report.json" in page and "no training ran" in page
    assert "No usage.json" in page and "No config.yaml" in page
    assert '<div class="v">2</div><div class="k">traces</div>' in page
    assert "partial answer one" in page and "partial answer two" not in page  # --max-examples 1
    assert _external_refs(page) == []


def test_missing_run_dir_is_a_user_error(tmp_path):
    proc = _cli(str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "not a run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_svg_chart_coordinates():
    svg = svg_line_chart("loss", {"loss": [(0, 1.0), (5, 0.5), (10, 0.0)]}, width=480, height=220)
    # plot area x 48..468, y 24..192: (0, 1) top-left, (5, .5) centre, (10, 0) bottom-right
    assert 'points="48.0,24.0 258.0,108.0 468.0,192.0"' in svg
    flat = svg_line_chart("<kl>", {"kl": [(1, 2.0), (2, 2.0)]})
    assert 'points="48.0,108.0 468.0,108.0"' in flat and "&lt;kl&gt;" in flat and "<kl>" not in flat
    assert svg_line_chart("empty", {"x": []}) == ""


def test_svg_fallback_without_matplotlib(tmp_path):
    """With matplotlib unimportable, a stage's metrics become inline SVG charts instead of PNGs."""
    run = tmp_path / "run"
    _jsonl(run / "dpo" / "metrics.jsonl", [{"step": s, "time": 0.0, "loss": 1.0 / s, "lr": 1e-5} for s in (1, 2, 4)])
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from caikit.report.html import build_report\n"
            f"print(build_report({str(run)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "data:image/png" not in page
    assert page.count("<svg") == 2 and page.count("<polyline") == 2  # loss first (a main metric), then lr
    assert page.index('aria-label="loss"') < page.index('aria-label="lr"')


# ---------------------------------------------------------------- headless Chromium over the DevTools protocol

def load_in_chromium(url: str, user_data_dir: Path, screenshot: Path | None = None) -> dict:
    """Open `url` in headless Chromium; return its DOM facts and every console/log/exception event."""
    with Chromium(user_data_dir) as browser:
        browser.navigate(url)
        facts = json.loads(browser.evaluate("""JSON.stringify({
            title: document.title, text: document.body.innerText,
            images: document.images.length,
            brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
            scripts: document.scripts.length, svgs: document.querySelectorAll('svg').length,
            traces: document.querySelectorAll('article.trace').length,
            beforeAfter: document.querySelectorAll('article.before-after').length,
            sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent)})"""))
        time.sleep(0.3)  # let late log entries arrive
        facts["problems"] = browser.problems()
        if screenshot is not None:
            browser.screenshot(screenshot)
        return facts


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(Debian: apt-get install -y chromium); the report browser check needs it")


@needs_chromium
def test_browser_detects_console_errors_and_broken_images(tmp_path):
    """The checker itself must be able to fail: a page with a console error and a broken image."""
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><title>probe</title><p>probe</p><img src="missing.png">'
                     '<script>console.error("caikit-probe")</script>', encoding="utf-8")
    facts = load_in_chromium(probe.as_uri(), tmp_path / "profile")
    assert facts["brokenImages"] == 1 and facts["scripts"] == 1
    assert any(e["method"] == "Runtime.consoleAPICalled" and "caikit-probe" in json.dumps(e) for e in facts["problems"])
    assert any(e["method"] == "Log.entryAdded" and "missing.png" in json.dumps(e) for e in facts["problems"])


@needs_chromium
def test_report_in_headless_chromium(full_report, tmp_path):
    path, _ = full_report
    shot = tmp_path / "report.png"
    facts = load_in_chromium(path.as_uri(), tmp_path / "profile", screenshot=shot)
    assert facts["problems"] == []  # no console messages, exceptions, log errors (CSP, loads) or dialogs
    assert facts["title"] == "caikit report: report-test"
    assert facts["scripts"] == 0 and facts["images"] == 6 and facts["brokenImages"] == 0
    assert facts["traces"] == 3 and facts["beforeAfter"] == 2
    assert facts["sections"] == ["Verdict", "Data", "Token usage and cost", "Training", "Evaluation: before vs after",
                                 "Critique and revision examples", "Configuration"]
    text = facts["text"]
    assert XSS in text  # shown as text, not run
    for example in ("red-team prompt number 2", "critique of answer 2", "I can't help with that.",
                    "BEFORE-ANSWER", "AFTER-ANSWER", "harmlessness win-rate (after vs before)"):
        assert example in text
    assert shot.stat().st_size > 10_000
    if os.environ.get("CAIKIT_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["CAIKIT_REPORT_SCREENSHOT"])
