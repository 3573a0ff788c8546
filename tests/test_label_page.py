"""`caikit label`: the server's routes and safety rules over real loopback HTTP, and the page in headless Chromium
(five pairs labelled by key presses, an undo, SIGKILL, restart, finish; model text with markup stays text).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import caikit.store
from caikit.errors import UserError
from caikit.label.rows import read_labels, to_preference_pairs
from caikit.label.server import LabelServer
from caikit.label.session import LabelSession
from caikit.label.sources import load_items, select, shown_left
from caikit.label.stats import judge_vs_humans
from caikit.records import Judgment
from caikit.testing.chromium import CHROMIUM, Chromium

pytestmark = pytest.mark.loopback

# Markup in model text: if the page ever inserted it as HTML, the script or the handler would retitle the page.
XSS = """<script>document.title = "pwned"</script><img src=x onerror="document.title = 'pwned'">"""
P_A = [0.9, 0.2, 0.5, 0.65, 0.05, 0.8]


def make_judge_run(root: Path) -> Path:
    run = root / "judge-run"
    run.mkdir()
    rows = [Judgment(id=f"judge-{i}", pair_id=f"q{i}#0-1", p_a=p,
                     prompt=[{"role": "system", "content": "You are a helpful, harmless assistant."},
                             {"role": "user", "content": f"Question {i}: how do I fix a bike chain?"}],
                     response_a=f"Answer A{i}: use a chain tool." + (XSS if i == 2 else ""),
                     response_b=f"Answer B{i}: take it to a shop.").to_dict() for i, p in enumerate(P_A)]
    (run / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


@contextmanager
def serving(run: Path, out: Path, host: str = "127.0.0.1", token: str = "", reveal: bool = False):
    items, _ = load_items(str(run))
    session = LabelSession(select(items, 0, 0), out, labeler="ann", source=str(run), reveal=reveal)
    server = LabelServer(session, host, 0, token)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        session.close()


def request(port: int, method: str, path: str, body=None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, payload


def state(port: int, headers: dict | None = None) -> dict:
    status, _, payload = request(port, "GET", "/api/state", headers=headers)
    assert status == 200, payload
    return json.loads(payload)


# ---------------------------------------------------------------- the server over loopback HTTP


def test_page_headers_and_fixed_routes(tmp_path):
    with serving(make_judge_run(tmp_path), tmp_path / "labels.jsonl") as server:
        port = server.server_address[1]
        status, headers, payload = request(port, "GET", "/")
        page = payload.decode()
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
        nonce = re.search(r"script-src 'nonce-([\w-]+)'", headers["content-security-policy"]).group(1)
        assert page.count(f'nonce="{nonce}"') == 2  # the one <style> and the one <script>
        assert page.count("<script") == 1 and "{{NONCE}}" not in page
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert request(port, "GET", "/")[1]["content-security-policy"] != csp  # a fresh nonce per page
        # offline: nothing fetched from elsewhere; no inline handlers; model text never parsed as HTML
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(|@import""", page, re.I)
        assert not re.search(r"\son[a-z]+\s*=", page) and "innerHTML" not in page and "insertAdjacentHTML" not in page
        for path in ("/", "/api/state"):
            headers = request(port, "GET", path)[1]
            assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer" and headers["x-frame-options"] == "DENY"
        for path in ("/page.html", "/../caikit/label/page.html", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd",
                     "/api/state/../../../etc/passwd", "/api/", "/labels.jsonl", "/favicon.ico"):
            assert request(port, "GET", path)[0] == 404, path
        assert request(port, "POST", "/", {})[0] == 405
        assert request(port, "GET", "/api/label")[0] == 405


def test_answers_map_sides_through_the_recorded_order_and_each_row_is_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(caikit.store.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    out = tmp_path / "labels.jsonl"
    with serving(make_judge_run(tmp_path), out, reveal=True) as server:
        port = server.server_address[1]
        first, before = state(port), len(synced)  # (creating the file fsync'd its directory)
        assert first["done"] == 0 and first["last"] is None
        assert "0.9" not in json.dumps(first) and "ai_p" not in json.dumps(first)  # no verdict before the answer
        for n, side in enumerate(["left", "right", "tie"], 1):
            pair = state(port)["pair"]
            status, _, payload = request(port, "POST", "/api/label",
                                         {"pair_id": pair["pair_id"], "choice": side, "note": f" note {n} "})
            assert status == 200, payload
            assert len(synced) - before == n  # fsync'd before the answer came back
            row = read_labels(out)[-1]
            left = shown_left(0, "ann", pair["pair_id"])
            assert row["shown_left"] == left and row["note"] == f"note {n}"
            assert row["choice"] == {"left": left, "right": "b" if left == "a" else "a", "tie": "tie"}[side]
            assert pair["left"] == row[f"response_{left}"]  # what the page showed left is what the row says
            last = json.loads(payload)["last"]
            assert last["ai_p_left"] == pytest.approx(row["ai_p_a"] if left == "a" else 1 - row["ai_p_a"])
        assert request(port, "POST", "/api/undo", {})[0] == 200 and len(synced) - before == 4
        assert read_labels(out)[-1]["choice"] == "undo" and state(port)["done"] == 2


def test_bad_requests_are_refused(tmp_path):
    out = tmp_path / "labels.jsonl"
    with serving(make_judge_run(tmp_path), out) as server:
        port = server.server_address[1]
        pair_id = state(port)["pair"]["pair_id"]
        other = next(i.pair_id for i in load_items(str(tmp_path / "judge-run"))[0] if i.pair_id != pair_id)
        assert request(port, "POST", "/api/label", {"pair_id": other, "choice": "left"})[0] == 409  # not current
        assert request(port, "POST", "/api/label", {"pair_id": pair_id, "choice": "a"})[0] == 400
        assert request(port, "POST", "/api/label", {"pair_id": pair_id, "choice": "left", "note": "x" * 2001})[0] == 400
        assert request(port, "POST", "/api/label", b"[1]")[0] == 400
        assert request(port, "POST", "/api/label", b"{" + b" " * 70000 + b"}")[0] == 400
        assert request(port, "POST", "/api/undo", {})[0] == 409  # nothing to undo yet
        # a cross-site form (not JSON) or a page from another origin cannot post labels
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request(port, "POST", "/api/label", b"pair_id=x&choice=left", form)[0] == 403
        evil = {"Origin": "http://evil.example"}
        assert request(port, "POST", "/api/label", {"pair_id": pair_id, "choice": "left"}, evil)[0] == 403
        # DNS rebinding: a page under another name that resolves to 127.0.0.1 is refused
        assert request(port, "GET", "/api/state", headers={"Host": f"evil.example:{port}"})[0] == 403
        assert request(port, "GET", "/api/state", headers={"Host": f"localhost:{port}"})[0] == 200
        assert request(port, "GET", "/api/state", headers={"Host": f"127.0.0.1@evil.example:{port}"})[0] == 403
        assert request(port, "GET", "/api/state", headers={"Host": "[::1"})[0] == 403
        assert not out.read_text()  # nothing refused was written


def test_token_required_beyond_loopback(tmp_path):
    token = "s3cret-token-0123456789"
    with serving(make_judge_run(tmp_path), tmp_path / "labels.jsonl", host="0.0.0.0", token=token) as server:
        port = server.server_address[1]  # bound to every address; the test connects through 127.0.0.1 only
        for method, path in [("GET", "/"), ("GET", "/api/state"), ("POST", "/api/undo"), ("GET", "/nope"),
                             ("PUT", "/"), ("OPTIONS", "/api/label")]:
            body = {} if method == "POST" else None
            assert request(port, method, path, body)[0] == 403, path
            assert request(port, method, path + "?token=" + "x" * len(token), body)[0] == 403, path
            assert request(port, method, path, body, {"X-Caikit-Token": token[:-1]})[0] == 403, path
        assert request(port, "GET", f"/?token={token}")[0] == 200
        assert state(port, {"X-Caikit-Token": token})["total"] == len(P_A)
        assert request(port, "PUT", f"/?token={token}")[0] == 405


def test_resume_and_undo_survive_a_restart(tmp_path):
    run, out = make_judge_run(tmp_path), tmp_path / "labels.jsonl"
    items = select(load_items(str(run))[0], 0, 0)
    session = LabelSession(items, out, labeler="ann", source=str(run))
    for item, side in zip(items, ["left", "skip", "right"]):
        session.answer(item.pair_id, side)
    session.close()
    again = LabelSession(items, out, labeler="ann", source=str(run))
    assert again.state()["done"] == 3 and again.current() == items[3]
    assert again.undo() and again.undo()  # takes back the third answer, then the skip
    assert again.state()["done"] == 1 and again.current() == items[1]
    again.close()
    third = LabelSession(items, out, labeler="ann", source=str(run))
    assert third.current() == items[1]  # the first unlabelled pair
    assert third.undo() and third.current() == items[0] and not third.undo()
    third.close()
    bob = LabelSession(items, out, labeler="bob", source=str(run))  # another person starts from the beginning
    assert bob.state()["done"] == 0
    bob.close()
    changed = run / "judgments.jsonl"
    first = items[0].pair_id[1]  # "q3#0-1" -> "3": a pair ann has rows for
    changed.write_text(changed.read_text().replace(f"Answer A{first}:", f"Another A{first}:"))
    with pytest.raises(UserError, match="with other text"):
        LabelSession(select(load_items(str(run))[0], 0, 0), out, labeler="ann", source=str(run))


# ---------------------------------------------------------------- the command, and the page in Chromium


class LabelCommand:
    """`caikit label` in a subprocess; `url` is the page URL it printed."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "caikit.cli", "label", *args, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = ""
        for line in self.proc.stdout:
            self.output += line
            if "open http" in line:
                break
        match = re.search(r"open (http://\S+)", self.output)
        assert match, self.output
        self.url = match.group(1)
        self.port = urlsplit(self.url).port

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.mark.e2e
def test_command_generates_a_token_beyond_loopback(tmp_path):
    command = LabelCommand(str(make_judge_run(tmp_path)), "--out", str(tmp_path / "l.jsonl"), "--host", "0.0.0.0")
    try:
        token = parse_qs(urlsplit(command.url).query)["token"][0]
        assert len(token) >= 24 and "every request must carry the token" in command.output
        assert request(command.port, "GET", "/")[0] == 403
        assert request(command.port, "GET", "/api/state")[0] == 403
        assert request(command.port, "GET", f"/?token={token}")[0] == 200
        assert state(command.port, {"X-Caikit-Token": token})["done"] == 0
    finally:
        command.kill()


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(Debian: apt-get install -y chromium); the labelling page check needs it")


def _answer(browser: Chromium, key: str, done: int) -> dict:
    """Press `key` on the pair shown; wait until the server has stored it. Returns what was on screen."""
    shown = browser.evaluate("""({pair: document.body.dataset.pair, title: document.title,
        left: document.getElementById('left-text').textContent, text: document.body.innerText,
        images: document.images.length, scripts: document.scripts.length})""")
    browser.press(key)
    browser.wait_until(f"document.body.dataset.done === '{done}' && document.body.dataset.busy === ''")
    return {**shown, "key": key}


@pytest.mark.e2e
@needs_chromium
def test_label_in_chromium_by_keys_with_undo_kill_and_restart(tmp_path):
    run, out = make_judge_run(tmp_path), tmp_path / "labels.jsonl"
    args = (str(run), "--out", str(out), "--labeler", "ann", "--reveal")
    command = LabelCommand(*args)
    seen: list[dict] = []
    with Chromium(tmp_path / "profile", window="1280,900") as browser:
        try:
            browser.navigate(command.url)
            browser.wait_until("document.body.dataset.done === '0'")
            assert "AI judge" not in browser.evaluate("document.body.innerText")  # hidden until answered
            browser.evaluate("document.getElementById('note').focus()")
            for key in ["2", "s", "u", "Enter"]:  # typed into the note, not answers; Enter leaves the field
                browser.press(key)
            assert browser.evaluate("document.activeElement.id !== 'note' && document.body.dataset.done === '0'")
            for n, key in enumerate(["1", "2", "0", "s", "1"], 1):
                seen.append(_answer(browser, key, n))
                if n == 1:
                    assert "The AI judge chose" in browser.evaluate("document.getElementById('last').textContent")
                    shot = tmp_path / "label-page.png"
                    browser.screenshot(shot)
                    if os.environ.get("CAIKIT_LABEL_SCREENSHOT"):
                        shutil.copy(shot, os.environ["CAIKIT_LABEL_SCREENSHOT"])
            browser.press("u")
            browser.wait_until("document.body.dataset.done === '4' && document.body.dataset.busy === ''")
            assert browser.evaluate("document.body.dataset.pair") == seen[-1]["pair"]  # the undone pair is back
        finally:
            command.kill()  # SIGKILL: no chance to flush or close anything
        rows = read_labels(out)
        assert [r["choice"] for r in rows][-1] == "undo" and len(rows) == 6
        assert rows[0]["note"] == "2su" and all(r["note"] == "" for r in rows[1:])
        assert [r["pair_id"] for r in rows[:5]] == [s["pair"] for s in seen]

        command = LabelCommand(*args)
        try:
            assert "(4 already labelled by ann)" in command.output
            browser.navigate(command.url)
            browser.wait_until("document.body.dataset.done === '4'")
            assert browser.evaluate("document.body.dataset.pair") == seen[-1]["pair"]  # resumes at the first open pair
            seen[-1] = _answer(browser, "2", 5)
            seen.append(_answer(browser, "1", 6))
            assert browser.wait_until("!document.getElementById('finished').hidden")
            assert "All 6 pairs have an answer" in browser.evaluate("document.body.innerText")
            problems = browser.problems()
            title = browser.evaluate("document.title")
        finally:
            command.kill()
    assert problems == []  # no console messages, exceptions, CSP violations or dialogs, in either session
    assert title == "caikit label"  # the markup in a response never ran
    xss_screens = [s for s in seen if s["pair"] == "q2#0-1"]
    assert len(xss_screens) == 1 and XSS in xss_screens[0]["text"]  # shown as text
    assert all(s["images"] == 0 and s["scripts"] == 1 for s in seen)

    rows = read_labels(out)
    assert len(rows) == 8
    latest = {r["pair_id"]: r for r in rows}  # one labeller: latest row per pair
    assert set(latest) == {f"q{i}#0-1" for i in range(6)} and len({r["id"] for r in rows}) == 6
    for screen in seen:
        row = latest[screen["pair"]]
        assert screen["left"] == row["response_" + row["shown_left"]]  # the recorded order is what was shown
        other = "b" if row["shown_left"] == "a" else "a"
        assert row["choice"] == {"1": row["shown_left"], "2": other, "0": "tie", "s": "skip"}[screen["key"]]
        assert row["labeler"] == "ann" and row["source"] == str(run)
        assert row["ai_p_a"] == P_A[int(screen["pair"][1])]

    # the file is human preference data as trainers read it: a/b answers only, p_chosen 1.0, source human
    pairs = to_preference_pairs(rows)
    decided = [s for s in seen if s["key"] in "12"]
    assert len(pairs) == len(decided) == 4
    for pair in pairs:
        screen = next(s for s in seen if s["pair"] == pair.provenance["pair_id"])
        row = latest[screen["pair"]]
        right = row["response_b" if row["shown_left"] == "a" else "response_a"]
        picked, not_picked = (screen["left"], right) if screen["key"] == "1" else (right, screen["left"])
        assert pair.chosen == [{"role": "assistant", "content": picked}]
        assert pair.rejected == [{"role": "assistant", "content": not_picked}]
        assert pair.prompt == row["prompt"] and pair.p_chosen == 1.0 and pair.source == "human"
    assert judge_vs_humans(rows)["n"] == 5  # four decided answers and a tie, all on pairs the judge scored
