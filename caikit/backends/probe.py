"""What an OpenAI-compatible server really does, asked rather than guessed: `caikit probe`, and the probe a run
takes at its start against a self-hosted server (cached in the run directory as probe.json).

Seven questions, a few tiny requests each:
  models          does GET /models list the model?
  honours_n       does one request with n=2 return 2 choices? (llama.cpp and Ollama answer one)
  logprobs        does a logprobs request return first-token log-probs (and how many alternatives)?
  system_message  does the model follow an instruction given only in a system message? ("followed" /
                  "not followed": a weak model may ignore one that the server did pass on)
  slots           how many requests it serves at once: llama.cpp says so (GET /props, total_slots);
                  elsewhere a short ramp of 1, 2, 4, 8, 16 concurrent requests finds where waiting begins
  speed           completion tokens per second, and the latency, of one short request
and from the last two, how many --workers processes it takes to keep the server busy (`suggested_workers`).

The run uses the answers: `--concurrency auto` becomes `slots`, the judge's `--method auto` picks logprob
only where log-probs come back, and the estimate counts n requests per sample where `n` is ignored.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from caikit.errors import UserError
from caikit.records import now_iso
from caikit.secrets import public_url

RAMP = (1, 2, 4, 8, 16)
# Requests/s one caikit process sends before its own core is the limit: 1 / its client CPU per request
# (scripts/bench_scale.py, docs/performance.md: 0.31-0.48 ms a request with persistence, retries and the
# limiter on a 2-core Xeon VM; 0.5 ms leaves room for a slower core).
REQUESTS_PER_PROCESS = 2000.0
WAITING = 1.6  # a level whose wall time is this many times one request's: the server made requests wait
SYSTEM_WORD = "BANANA"


class ProbeError(Exception):
    pass


class Server:
    """A tiny synchronous client (stdlib only) for the probe's requests."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float):
        from caikit.backends.api import split_base_url

        base_url, query = split_base_url(base_url)  # ?api-version=...: on every request, after the path
        self.query = "?" + urlencode(query) if query else ""
        self.base_url, self.model, self.api_key, self.timeout = base_url.rstrip("/"), model, api_key, timeout

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "X-Caikit-Probe": "1"}  # servers may log probes apart
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url + self.query, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
            raise ProbeError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None

    def get(self, path: str, *, root: bool = False) -> tuple[int, Any]:
        base = self.base_url
        if root:  # /props lives at the server root, beside /v1
            parts = urlsplit(base)
            base = urlunsplit(parts._replace(path=parts.path.rsplit("/v1", 1)[0]))
        return self._call("GET", base + path)

    def chat(self, messages: list[dict[str, str]], **params: Any) -> tuple[dict[str, Any], float]:
        start = time.monotonic()
        status, body = self._call("POST", self.base_url + "/chat/completions",
                                  {"model": self.model, "messages": messages, **params})
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise ProbeError(f"HTTP {status} from /chat/completions")
        if not all(isinstance(c, dict) and isinstance(c.get("message"), dict)
                   and isinstance(c["message"].get("content"), (str, type(None))) for c in body["choices"]):
            raise ProbeError("a malformed answer from /chat/completions")
        return body, time.monotonic() - start


def _listed(server: Server) -> tuple[bool | None, list[str]]:
    status, body = server.get("/models")
    if status != 200 or not isinstance(body, dict):
        return None, []
    ids = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    return server.model in ids, ids[:20]


def _slots_from_props(server: Server) -> int | None:
    status, body = server.get("/props", root=True)
    slots = body.get("total_slots") if status == 200 and isinstance(body, dict) else None
    return slots if isinstance(slots, int) and slots > 0 else None


def _ramp(server: Server) -> int:
    """The largest level of RAMP whose concurrent requests finished without waiting in line, each level timed
    against warm single requests of the same kind (a server's first request can take seconds: its cold start)."""
    hello = [{"role": "user", "content": "Count from one to five."}]

    def level_seconds(pool, level: int) -> float:
        start = time.monotonic()
        list(pool.map(lambda _: server.chat(hello, max_tokens=8, temperature=0), range(level)))
        return time.monotonic() - start

    served = 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=RAMP[-1]) as pool:
        level_seconds(pool, 1)  # warm-up, not timed
        one = min(level_seconds(pool, 1) for _ in range(2))
        for level in RAMP[1:]:
            if level_seconds(pool, level) > WAITING * max(one, 0.02):
                break
            served = level
    return served


def probe_server(base_url: str, model: str, api_key: str | None = None, *, timeout: float = 30.0,
                 ramp: bool = True) -> dict[str, Any]:
    """Ask the server the seven questions (see the module docstring)."""
    server = Server(base_url, model, api_key, timeout)
    hello = [{"role": "user", "content": "Say hello."}]
    try:
        listed, models = _listed(server)
        body, seconds = server.chat(hello, max_tokens=16, temperature=0)
        usage = body.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else 0
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0
        n_body, _ = server.chat(hello, max_tokens=4, temperature=1.0, n=2)
        lp_body, _ = server.chat(hello, max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
        system_body, _ = server.chat([{"role": "system", "content": f"Whatever the user says, answer with exactly "
                                                                    f"one word: {SYSTEM_WORD}."},
                                      {"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0)
        slots, slots_from = _slots_from_props(server), "props"
        if slots is None and ramp:
            slots, slots_from = _ramp(server), "ramp"
    except ProbeError as e:
        raise UserError(f"cannot probe {public_url(base_url)}: {e}") from None
    logprobs = lp_body["choices"][0].get("logprobs") if lp_body["choices"] else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else {}
    alternatives = first.get("top_logprobs")
    said = (system_body["choices"][0]["message"].get("content") or "") if system_body["choices"] else ""
    return {"base_url": public_url(base_url), "model": model, "model_listed": listed, "models": models,
            "honours_n": len(n_body["choices"]) >= 2, "logprobs": bool(first),
            "top_logprobs": len(alternatives) if isinstance(alternatives, list) else 0,
            "system_message": "followed" if SYSTEM_WORD.lower() in said.lower() else "not followed",
            "slots": slots, "slots_from": slots_from if slots else None,
            "tokens_per_second": round(tokens / seconds, 1) if tokens and seconds > 0 else None,
            "latency_s": round(seconds, 3), "suggested_workers": suggest_workers(slots, seconds),
            "probed_at": now_iso()}


def suggest_workers(slots: int | None, latency_s: float | None, cores: int | None = None) -> int:
    """--workers for this server: its measured capacity (requests at once / the latency of one request, in
    requests/s) over what one caikit process sends, at most one per core."""
    import os

    if not slots or not latency_s or latency_s <= 0:
        return 1
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, math.ceil(slots / latency_s / REQUESTS_PER_PROCESS)))


def format_probe(p: dict[str, Any]) -> str:
    def yes(value: Any) -> str:
        return "unknown" if value is None else ("yes" if value else "no")

    listed = yes(p["model_listed"]) + ("" if p["model_listed"] is not False else f" (it lists: {', '.join(p['models'])})")
    return "\n".join([
        f"caikit probe: {p['base_url']} model {p['model']}",
        f"  model listed          {listed}",
        f"  honours n             {yes(p['honours_n'])}" + ("" if p["honours_n"] else
                                                           "  (caikit asks n times for n samples)"),
        f"  log-probs             {yes(p['logprobs'])}" + (f" (top {p['top_logprobs']})" if p["logprobs"] else
                                                           "  (the judge votes instead)"),
        f"  system message        {p['system_message']}",
        f"  requests at once      {p['slots'] or 'unknown'}" + (f" ({p['slots_from']})" if p["slots_from"] else ""),
        f"  speed                 {p['tokens_per_second'] or '?'} tokens/s, {p['latency_s']:.2f} s for a short "
        "request",
        f"  worker processes      {p.get('suggested_workers', 1)} (--workers: one caikit process sends about "
        f"{REQUESTS_PER_PROCESS:,.0f} requests/s)"])
