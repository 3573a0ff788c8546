"""Headless Chromium driven over the DevTools protocol, for tests of the pages caikit serves or writes.

Debian's `chromium` is started with `--remote-debugging-port=0`; a tiny standard-library websocket client
(RFC 6455, text frames) speaks the protocol, so no browser-automation package is needed. Used by the report
test (a static file) and the labelling-page test (a live server, driven by key presses).

    with Chromium(tmp_path / "profile") as browser:
        browser.navigate("http://127.0.0.1:8765/")
        browser.press("1")
        text = browser.evaluate("document.body.innerText")
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]
# Events that mean the page misbehaved: console output, uncaught exceptions, log entries (CSP violations,
# failed loads) and dialogs (alert() from an injected script).
PROBLEM_EVENTS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded",
                  "Page.javascriptDialogOpening")


class DevTools:
    """Just enough of a websocket client (RFC 6455, text frames) to speak the Chrome DevTools protocol."""

    def __init__(self, port: int, path: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id, self.events = 0, []

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools socket closed")
            data += chunk
        return data

    def _recv(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._read(2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            data = self._read(size)
            if b0 & 0x0F == 0x8:
                raise ConnectionError("DevTools socket closed")
            if b0 & 0x0F in (0x9, 0xA):  # ping / pong: no reply needed for a short session
                continue
            payload += data
            if b0 & 0x80:
                return json.loads(payload)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data, mask = json.dumps(msg).encode(), os.urandom(4)
        size = len(data)
        head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            reply = self._recv()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._recv())
        raise TimeoutError(method)

    def drain(self, quiet: float = 0.5) -> None:
        """Collect the events that arrive until the socket has been quiet for `quiet` seconds."""
        self.sock.settimeout(quiet)
        try:
            while True:
                self.events.append(self._recv())
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(30)


class Chromium:
    """One headless Chromium with one page attached (Page, Runtime and Log domains enabled)."""

    def __init__(self, user_data_dir: Path, window: str = "1280,2000"):
        assert CHROMIUM, "chromium is not installed (Debian: apt-get install -y chromium)"
        user_data_dir.mkdir(parents=True, exist_ok=True)
        (user_data_dir / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's stale port
        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}",
                                      "--remote-debugging-port=0", f"--window-size={window}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = user_data_dir / "DevToolsActivePort"
            deadline = time.time() + 60
            while not (port_file.exists() and len(port_file.read_text().split()) == 2):
                assert self.proc.poll() is None and time.time() < deadline, "chromium did not start"
                time.sleep(0.1)
            port, path = port_file.read_text().split()
            self.cdp = DevTools(int(port), path)
            page = next(t for t in self.cdp.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.cdp.call("Target.attachToTarget",
                                         {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.cdp.call(method, params, session=self.session)

    def navigate(self, url: str) -> None:
        self.cdp.events = [e for e in self.cdp.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", {"url": url})
        self.cdp.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The JSON-serialisable value of `expression` in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll `expression` until it is truthy; returns its value."""
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.05)

    def press(self, key: str) -> None:
        """A real key press (keyDown with its text, then keyUp) on the focused element of the page: one
        character, or Enter / Escape / Tab."""
        named = {"Enter": ("\r", 13), "Escape": ("", 27), "Tab": ("\t", 9)}
        code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}" if len(key) == 1 else key
        text, vk = named[key] if key in named else (key, ord(key.upper()))
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": text,
                                             "unmodifiedText": text, "windowsVirtualKeyCode": vk})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk})

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))

    def problems(self) -> list[dict]:
        """Every console message, exception, log entry and dialog seen so far."""
        self.cdp.drain()
        return [e for e in self.cdp.events if e.get("method") in PROBLEM_EVENTS]

    def close(self) -> None:
        try:
            if getattr(self, "cdp", None) is not None:
                self.cdp.call("Browser.close")
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
