"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions and Anthropic messages APIs,
and their batch APIs (OpenAI Files + Batches, Anthropic Message Batches: see caikit.testing.fake_batch).

Exactly enough of both wire formats for the official `openai` and `anthropic` SDKs to parse its
answers, plus scripted or seeded faults (429 with Retry-After, 500, 503, hangs, truncated bodies,
dropped connections) and a request log (arrival/finish times, peak concurrency) to assert on.

    with FakeAPIServer(latency=0.05, faults=FaultPlan(script=["429", None])) as server:
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-fake")

Every connection gets its own daemon thread, so slow requests never queue behind each other.
Answers are deterministic: the same request body always gets the same text.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import random
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from caikit.testing.fake_batch import ANTHROPIC_LIMITS, OPENAI_LIMITS, BatchFaultPlan, FakeBatches
from caikit.testing.wire import (ERROR_TYPES, FAULT_KINDS, FakeRequest, FaultPlan, LoggedRequest,  # noqa: F401
                                 count_fault, draw_fault)




def default_responder(request: FakeRequest) -> str:
    """Deterministic text from a hash of (messages, seed, choice index)."""
    digest = _hash([request.messages, request.seed, request.index])[:8]
    return f"Answer {digest} to: {request.last_user_message[:40]}"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _text_of(content: Any) -> str:
    """Message content as plain text: a string, or a list of {type: text, text} blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


def _tokens(text: str) -> list[str]:
    """Whitespace 'tokens' with their leading space, as BPE tokenizers tend to split words."""
    return re.findall(r"\s*\S+", text)


def _word_count(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes; without this, Nagle + delayed ACK add ~40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake._handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # silent: tests read the structured log instead


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a burst of connections must not overflow the listen backlog
    fake: "FakeAPIServer"

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-reply (a run that stops at once, a timeout) is normal here; anything else
        is a fault of this server, printed as socketserver does."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeAPIServer:
    """Loopback OpenAI + Anthropic API. Use as a context manager, or .start() / .stop()."""

    def __init__(self, responder: Callable[[FakeRequest], str] | None = None, *,
                 latency: float | Callable[[FakeRequest], float] = 0.0,
                 faults: FaultPlan | None = None,
                 logprobs: Callable[[FakeRequest], dict[str, float] | None] | None = None,
                 cache_usage: Callable[[FakeRequest], tuple[int, int]] | None = None,
                 require_key: str | None = None,
                 reject: Callable[[FakeRequest], tuple[int, str] | None] | None = None,
                 max_n: int | None = None, slots: int | None = None, props: dict[str, Any] | None = None,
                 models: list[str] | None = None, logprobs_supported: bool = True, honour_max_tokens: bool = True,
                 batch_latency: float = 0.0, batch_faults: BatchFaultPlan | None = None,
                 batch_line_fault: Callable[[FakeRequest], str | None] | None = None,
                 batch_endpoint_faults: FaultPlan | None = None,
                 openai_batch_limits: tuple[int, int] = OPENAI_LIMITS,
                 anthropic_batch_limits: tuple[int, int] = ANTHROPIC_LIMITS):
        """`cache_usage(request) -> (cache_read_tokens, cache_write_tokens)` to report prompt caching;
        `require_key`: accept only this key (any non-empty key otherwise); `reject(request) ->
        (status, message)` answers a request with that error, as provider-side validation would;
        `max_n`: answer at most this many choices, as servers that ignore `n` do (llama.cpp, Ollama);
        `slots`: work on at most this many requests at once, the rest wait in line (a llama.cpp server with
        that many slots), their wait counting in the client's timeout; `props`: what GET /props answers
        (llama.cpp: {"total_slots": N}), 404 when None; `models`: what GET /v1/models lists (default: the
        one model name "fake-model"); `logprobs_supported=False`: logprobs requests get none, as some
        servers answer; `honour_max_tokens=False`: answers are not cut at max_tokens (a misbehaving server).
        Batch endpoints (see caikit.testing.fake_batch, reached as `server.batches`): a job takes
        `batch_latency` seconds; `batch_faults` / `batch_line_fault(request) -> kind | None` fail lines
        or jobs; `batch_endpoint_faults` fault the batch HTTP calls; `*_batch_limits` = (requests, bytes)."""
        self.responder = responder or default_responder
        self.latency = latency
        self.logprobs = logprobs
        self.cache_usage = cache_usage
        self.require_key = require_key
        self.reject = reject
        self.max_n = max_n
        self.props = props
        self.models = models if models is not None else ["fake-model"]
        self.logprobs_supported = logprobs_supported
        self.honour_max_tokens = honour_max_tokens
        self._slots = threading.BoundedSemaphore(slots) if slots else None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._log: list[LoggedRequest] = []
        self.probe_log: list[LoggedRequest] = []  # `caikit probe`'s own requests (X-Caikit-Probe), kept apart
        self._in_flight = 0
        self.max_in_flight = 0
        self.set_faults(faults)
        self.batches = FakeBatches(self, latency=batch_latency, faults=batch_faults, line_fault=batch_line_fault,
                                   endpoint_faults=batch_endpoint_faults, openai_limits=openai_batch_limits,
                                   anthropic_limits=anthropic_batch_limits)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "FakeAPIServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a latency or a hang: they drop the request
        self.wait_idle(2.0)  # so the log is final once stop() returns
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "FakeAPIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages itself

    # -- faults and log ----------------------------------------------------------------------------
    def set_faults(self, faults: FaultPlan | None) -> None:
        """Install a new fault plan, restarting its script, random stream and per-key counts."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed if faults else 0)
            self._arrivals = 0
            self._faults_by_key: collections.Counter = collections.Counter()

    @property
    def log(self) -> list[LoggedRequest]:
        """A snapshot of every request so far, in arrival order."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._log]

    def requests_by_key(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(r.key for r in self._log))

    def reset_log(self) -> None:
        with self._lock:
            self._log = [r for r in self._log if r.finish is None]  # still in flight: finishes later
            self.max_in_flight = self._in_flight

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is in flight (the client may see an error before the log is final)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    return True
            time.sleep(0.005)
        return False

    def _decide_fault(self, req: FakeRequest) -> str | None:
        plan = self.faults
        if plan is None:
            return None
        with self._lock:
            if plan.always_fail_keys is not None and plan.always_fail_keys(req):
                return "500"
            i, self._arrivals = self._arrivals, self._arrivals + 1
            kind = plan.script[i] if i < len(plan.script) else draw_fault(self._rng, FAULT_KINDS, plan.rates)
            return count_fault(kind, self._faults_by_key, req.key, plan.max_faults_per_key)

    # -- one request -------------------------------------------------------------------------------
    def _handle(self, h: _Handler) -> None:
        path = h.path.split("?")[0].rstrip("/")
        provider = "anthropic" if path.endswith("/messages") or path.startswith("/v1/messages/") else "openai"
        entry = LoggedRequest(time.monotonic(), provider, h.path)
        status = 0
        probe = bool(h.headers.get("X-Caikit-Probe"))  # answered plainly: no faults, scripts or custom answers
        with self._lock:
            (self.probe_log if probe else self._log).append(entry)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            length = int(h.headers.get("Content-Length") or 0)
            raw_body = h.rfile.read(length) if length else b""
            batch_route = self.batches.routes(path)
            if h.command == "GET" and path in ("/v1/models", "/props"):
                status = self._describe(h, path)
                return
            if not batch_route and (h.command != "POST" or path not in ("/v1/chat/completions", "/v1/messages")):
                status = self._send_error(h, provider, 404, f"no route for {h.command} {h.path}")
                return
            api_key = (h.headers.get("x-api-key") if provider == "anthropic" else None) or \
                (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not api_key:
                status = self._send_error(h, provider, 401, "missing API key")
                return
            if self.require_key is not None and api_key != self.require_key:
                # echoes the key, as real APIs do (partly masked): clients must scrub it
                status = self._send_error(h, provider, 401, f"Incorrect API key provided: {api_key}")
                return
            if batch_route:
                status = self.batches.handle(h, provider, h.command, path, raw_body)
                return
            try:
                body = json.loads(raw_body or b"{}")
                req = self._parse(provider, body)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                status = self._send_error(h, provider, 400, f"malformed request: {e}")
                return
            entry.key = req.key
            rejection = self.reject(req) if self.reject and not probe else None
            if rejection:
                status = self._send_error(h, provider, *rejection)
                return
            fault = entry.fault = None if probe else self._decide_fault(req)
            req.probe = probe
            latency = self.latency(req) if callable(self.latency) else self.latency
            with self._slot():
                entry.started = time.monotonic()
                if latency and self._stopping.wait(latency):
                    return
                status = self._answer(h, req, fault)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            h.close_connection = True  # the client went away: nothing to answer
        except Exception as e:  # noqa: BLE001 - a broken responder shows up as a 500, not a dead socket
            status = self._send_error(h, provider, 500, f"fake server error: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._in_flight -= 1
                entry.finish, entry.status = time.monotonic(), status

    def _slot(self):
        """One of the server's slots (wait in line for it), or nothing to wait for without `slots`."""
        import contextlib

        if self._slots is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def held():
            while not self._slots.acquire(timeout=0.05):
                if self._stopping.is_set():
                    raise BrokenPipeError("server stopping")
            try:
                yield
            finally:
                self._slots.release()

        return held()

    def _describe(self, h: _Handler, path: str) -> int:
        if path == "/props":
            if self.props is None:
                return self._send_error(h, "openai", 404, "no route for GET /props")
            return self._send(h, 200, json.dumps(self.props).encode())
        listing = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                                              for m in self.models]}
        return self._send(h, 200, json.dumps(listing).encode())

    def _answer(self, h: _Handler, req: FakeRequest, fault: str | None) -> int:
        plan = self.faults
        if fault == "disconnect":
            return self._drop(h)
        if fault == "hang":
            self._stopping.wait(plan.hang_seconds)
            if plan.hang_then == "drop":
                return self._drop(h)
        if fault in ("429", "500", "503"):
            headers = {"Retry-After": str(plan.retry_after)} if fault == "429" and plan.retry_after is not None else {}
            return self._send_error(h, req.provider, int(fault), f"injected fault {fault}", headers)
        body = self._openai_response(req) if req.provider == "openai" else self._anthropic_response(req)
        data = json.dumps(body).encode()
        if fault == "truncated":
            data = data[: len(data) // 2]  # a valid 200 whose JSON stops mid-object
        return self._send(h, 200, data)

    def _parse(self, provider: str, body: dict[str, Any]) -> FakeRequest:
        if body.get("stream"):
            raise ValueError("streaming is not supported by the fake server")
        messages = [{"role": m["role"], "content": _text_of(m.get("content"))} for m in body["messages"]]
        if provider == "anthropic" and body.get("system"):
            messages.insert(0, {"role": "system", "content": _text_of(body["system"])})
        stop = body.get("stop") if provider == "openai" else body.get("stop_sequences")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if provider == "anthropic" and not max_tokens:
            raise ValueError("max_tokens is required")
        return FakeRequest(
            provider=provider, model=body["model"], messages=messages,
            n=int(body.get("n") or 1) if provider == "openai" else 1,
            temperature=body.get("temperature"), max_tokens=max_tokens, stop=stop, seed=body.get("seed"),
            logprobs=bool(body.get("logprobs")) if provider == "openai" else False,
            top_logprobs=int(body.get("top_logprobs") or 0), key=_hash(body)[:16], raw=body)

    def _complete(self, req: FakeRequest) -> tuple[list[str], str, str | None, dict[str, float] | None]:
        """(generated tokens, "stop" | "length", the stop sequence hit, first-token top logprobs)."""
        text = (default_responder if req.probe else self.responder)(req)
        top = self.logprobs(req) if (self.logprobs and req.logprobs and not req.probe) else None
        if top:
            text = max(top, key=top.get) + " " + text.lstrip()  # the first token is the argmax
        hits = sorted((text.index(s), s) for s in req.stop if s and s in text)
        stop_hit = hits[0][1] if hits else None
        if hits:
            text = text[: hits[0][0]]
        tokens, finish = _tokens(text), "stop"
        if req.max_tokens is not None and len(tokens) > req.max_tokens and self.honour_max_tokens:
            tokens, finish, stop_hit = tokens[: req.max_tokens], "length", None
        return tokens, finish, stop_hit, top

    def _usage_numbers(self, req: FakeRequest) -> tuple[int, int, int]:
        prompt = _word_count(req.messages)
        read, write = self.cache_usage(req) if self.cache_usage else (0, 0)
        return prompt, min(read, prompt), min(write, max(0, prompt - read))

    def _openai_response(self, req: FakeRequest) -> dict[str, Any]:
        choices, completion_tokens = [], 0
        for i in range(min(req.n, self.max_n or req.n)):
            tokens, finish, _, top = self._complete(dataclasses.replace(req, index=i))
            completion_tokens += len(tokens)
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": "".join(tokens),
                                                               "refusal": None}, "finish_reason": finish,
                                      "logprobs": None}
            if req.logprobs and self.logprobs_supported:
                choice["logprobs"] = {"content": [self._token_logprob(t, top if j == 0 else None, req.top_logprobs)
                                                  for j, t in enumerate(tokens)], "refusal": None}
            choices.append(choice)
        prompt, cached, _ = self._usage_numbers(req)
        return {
            "id": "chatcmpl-" + req.key, "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "choices": choices, "system_fingerprint": "fp_fake",
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached},
                      "completion_tokens_details": {"reasoning_tokens": 0}},
        }

    @staticmethod
    def _token_logprob(token: str, top: dict[str, float] | None, k: int) -> dict[str, Any]:
        ranked = sorted(top.items(), key=lambda kv: -kv[1]) if top else [(token, -0.05)]
        logprob = dict(ranked).get(token, ranked[-1][1] - 1.0)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:k]]}

    def _anthropic_response(self, req: FakeRequest) -> dict[str, Any]:
        tokens, finish, hit, _ = self._complete(req)
        text = "".join(tokens)
        stop_reason = "max_tokens" if finish == "length" else ("stop_sequence" if hit else "end_turn")
        prompt, read, write = self._usage_numbers(req)
        return {
            "id": "msg_" + req.key, "type": "message", "role": "assistant", "model": req.model,
            "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": hit,
            "usage": {"input_tokens": prompt - read - write, "output_tokens": len(tokens),
                      "cache_read_input_tokens": read, "cache_creation_input_tokens": write},
        }

    # -- wire helpers ------------------------------------------------------------------------------
    def _send(self, h: _Handler, status: int, data: bytes, headers: dict[str, str] | None = None, *,
              content_type: str = "application/json") -> int:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
        return status

    def _send_error(self, h: _Handler, provider: str, status: int, message: str,
                    headers: dict[str, str] | None = None) -> int:
        fallback = ("invalid_request_error",) * 2 if status < 500 else ("server_error", "api_error")
        openai_type, anthropic_type = ERROR_TYPES.get(status, fallback)
        if provider == "anthropic":
            body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": openai_type, "param": None, "code": str(status)}}
        return self._send(h, status, json.dumps(body).encode(), headers)

    def _drop(self, h: _Handler) -> int:
        """Close the socket without a response."""
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return 0
