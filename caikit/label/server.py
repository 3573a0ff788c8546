"""`caikit label SOURCE --out labels.jsonl`: a local page where a person compares two responses.

The server answers four fixed routes and nothing else (no file is ever looked up from a request path):
  GET  /            page.html, with a fresh CSP nonce for its one inline <style> and <script>
  GET  /api/state   the pair to answer now and the progress (never the AI verdict on that pair)
  POST /api/label   {pair_id, choice: left|right|tie|skip, note}  -> the new state
  POST /api/undo    {}                                             -> the new state

Safe by default. It binds 127.0.0.1. Any other address needs a token (--token, or one is generated and
printed in the URL); then every request must carry it (?token= or the X-Caikit-Token header) or gets 403,
compared in constant time. Without a token the Host header must name a loopback host (a DNS-rebinding page
cannot reach the server under its own name), and POSTs must be JSON from this origin (a cross-site form
cannot post labels). Every response says: no caching, no sniffing, no framing, no referrer.
"""

from __future__ import annotations

import dataclasses
import getpass
import hmac
import json
import secrets
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from caikit.config import option
from caikit.errors import UserError
from caikit.label.session import SIDES, LabelSession, StalePair
from caikit.label.sources import judge_gate_status, load_items, select

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024  # bytes: a note and a pair id; anything larger is not from the page
MAX_NOTE = 2000  # characters (the page's input has the same maxlength)
TOKEN_HEADER = "X-Caikit-Token"


@dataclasses.dataclass
class LabelConfig:
    source: str = option("", help="a judge run directory (audit its judgments), a generate run directory "
                                  "(revision vs initial response) or a labelled-pairs file (.jsonl, .json, .csv, "
                                  ".parquet, .jsonl.gz)")
    out: str = option("labels.jsonl", help="labels file; one row per answer, appended and fsync'd; rerun the same "
                                           "command to resume at the first unlabelled pair")
    labeler: str = option("", help="your name in the label rows (default: your login name)")
    sample: int = option(0, low=0, help="label this many pairs (0: all); from a judge run, spread evenly over the "
                                 "judge's confidence so disagreements surface")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the sample, the order and the left/right placement")
    host: str = option("127.0.0.1", help="address to listen on; anything but 127.0.0.1 / localhost / ::1 "
                                         "requires a token")
    port: int = option(8765, low=0, high=65535, help="port (0: any free port)")
    token: str = option("", help="secret every request must carry (?token=...); generated when --host is not "
                                 "loopback and none is given")
    reveal: bool = option(False, help="after each answer, show the AI judge's verdict on that pair")

    def validate(self) -> None:
        if not self.source:
            raise UserError("give a SOURCE: a judge run directory, a generate run directory or a pairs file")
        if self.sample < 0:
            raise UserError("--sample must be >= 0 (0: all pairs)")
        if not 0 <= self.port <= 65535:
            raise UserError("--port must be in 0..65535")
        if Path(self.out).is_dir():
            raise UserError("--out must be a file (labels.jsonl), not a directory", path=self.out)
        if self.token and (len(self.token) < 12 or not self.token.isprintable()):
            raise UserError("--token must be at least 12 printable characters")


def page_html() -> str:
    return resources.files("caikit.label").joinpath("page.html").read_text(encoding="utf-8")


def security_headers(nonce: str = "") -> dict[str, str]:
    source = f"'nonce-{nonce}'" if nonce else "'none'"
    csp = (f"default-src 'none'; script-src {source}; style-src {source}; connect-src 'self'; img-src data:; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
            "Pragma": "no-cache", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin"}


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser's idle keep-alive or preconnect socket never holds up the others

    def __init__(self, session: LabelSession, host: str, port: int, token: str = ""):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.session, self.token, self.page = session, token, page_html()
        super().__init__(("127.0.0.1" if host == "localhost" else host, port), LabelHandler)


class LabelHandler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "caikit-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the terminal is for the URL
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _other_method(self) -> None:  # the token check first, then 404 / 405 like any unknown request
        self._handle(self.command)

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        if not self._allowed(url.query, method):
            return self._send(403, b"forbidden\n", "text/plain; charset=utf-8")
        routes = {("GET", "/"): self._page, ("GET", "/api/state"): self._state,
                  ("POST", "/api/label"): self._label, ("POST", "/api/undo"): self._undo}
        route = routes.get((method, url.path))
        if route is None:
            known = any(path == url.path for _, path in routes)
            return self._send(405 if known else 404, b"not found\n" if not known else b"method not allowed\n",
                              "text/plain; charset=utf-8")
        route()

    def _allowed(self, query: str, method: str) -> bool:
        host = self.headers.get("Host", "")
        try:
            hostname = urlsplit(f"//{host}").hostname
        except ValueError:  # "[" and other hosts no URL can hold
            return False
        if self.server.token:
            given = self.headers.get(TOKEN_HEADER) or (parse_qs(query).get("token") or [""])[0]
            if not hmac.compare_digest(given.encode("utf-8"), self.server.token.encode("utf-8")):
                return False
        elif hostname not in (*LOOPBACK_HOSTS, None):
            return False
        if method == "POST":
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{host}":
                return False
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return False
        return True

    def _send(self, status: int, body: bytes, content_type: str, nonce: str = "") -> None:
        self.send_response(status)
        for name, value in {**security_headers(nonce), "Content-Type": content_type,
                            "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _page(self) -> None:
        nonce = secrets.token_urlsafe(18)
        self._send(200, self.server.page.replace("{{NONCE}}", nonce).encode("utf-8"), "text/html; charset=utf-8",
                   nonce)

    def _state(self) -> None:
        self._json(200, self.server.session.state())

    def _label(self) -> None:
        body = self._body()
        session = self.server.session
        if body is None or body.get("choice") not in SIDES or not isinstance(body.get("pair_id"), str) \
                or not isinstance(body.get("note", ""), str) or len(body.get("note", "")) > MAX_NOTE:
            return self._json(400, {"error": f"expected JSON {{pair_id, choice: {'|'.join(SIDES)}, note}}",
                                    "state": session.state()})
        try:
            session.answer(body["pair_id"], body["choice"], body.get("note", "").strip())
        except StalePair:
            return self._json(409, {"error": "that pair was already answered (another tab?)",
                                    "state": session.state()})
        except OSError as e:  # a full or read-only disk: the page says so, the answer stays open to retry
            return self._not_saved(e)
        self._json(200, session.state())

    def _undo(self) -> None:
        if self._body() is None:
            return self._json(400, {"error": "expected a JSON body", "state": self.server.session.state()})
        try:
            undone = self.server.session.undo()
        except OSError as e:
            return self._not_saved(e)
        if not undone:
            return self._json(409, {"error": "nothing to undo", "state": self.server.session.state()})
        self._json(200, self.server.session.state())

    def _not_saved(self, e: OSError) -> None:
        where = e.filename or self.server.session.out
        self._json(507, {"error": f"not saved: cannot write {where}: {e.strerror or e}; free some space and "
                                  "press again", "state": self.server.session.state()})


def lock_labels(out: str | Path):
    """One `caikit label` per labels file: a second one is refused (answers from both would interleave, and an
    undo in one would take back an answer saved through the other). The lock is `.NAME.lock` beside the file;
    the kernel drops it when the process dies, so a killed server never blocks the rerun."""
    from caikit.rundir import DirLock

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the directory: {e.strerror}", path=str(out.parent)) from None
    return DirLock(out.with_name(f".{out.name}.lock"), "label", remove=True, names=out,
                   why="two labelling pages on one file would mix their answers and undo each other's")


def page_url(host: str, port: int, token: str) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def run_label(cfg: LabelConfig) -> int:
    labeler = cfg.labeler.strip() or _login_name()
    token = cfg.token or ("" if cfg.host in LOOPBACK_HOSTS else secrets.token_urlsafe(24))
    items, kind = load_items(cfg.source)
    selected = select(items, cfg.sample, cfg.seed)
    gate = judge_gate_status(Path(cfg.source)) if kind == "judge run" else ""
    lock = lock_labels(cfg.out)
    try:
        session = LabelSession(selected, cfg.out, labeler=labeler, source=cfg.source, seed=cfg.seed,
                               reveal=cfg.reveal, judge_gate=gate)
    except BaseException:
        lock.release()
        raise
    try:
        server = LabelServer(session, cfg.host, cfg.port, token)
    except OSError as e:
        session.close()
        lock.release()
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e} (try --port 0)") from None
    start = session.state()
    print(f"caikit label: {start['total']} pairs from {kind} {cfg.source} ({start['done']} already labelled by "
          f"{labeler}); labels -> {Path(cfg.out)}", flush=True)
    if token and cfg.host not in LOOPBACK_HOSTS:
        print(f"caikit label: listening on {cfg.host}, not only this machine: every request must carry the token",
              flush=True)
    print(f"caikit label: open {page_url(cfg.host, server.server_address[1], token)}   (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.close()
        lock.release()
    end = session.state()
    print(f"caikit label: {end['done']} of {end['total']} pairs labelled by {labeler} in {cfg.out}"
          + ("" if end["pair"] is None else "; rerun the same command to go on"))
    return 0


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "labeler"
