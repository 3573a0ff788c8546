"""Progress that counts what is actually progressing: requests, per named phase.

A generate item is three requests in a row (answer, critique, revise). On a local backend every prompt's answer is
batched before any critique starts, so a bar of finished *items* sits at 0 for most of the run and then shows an
ETA of hours. Here the unit is the request: each phase (named by the stage with `phase("critique")`) counts its
finished requests, the total is items × the requests an item takes (when the stage says), and the ETA comes from
the request rate.

In a terminal this is one tqdm bar; elsewhere (a log file, CI) it is one plain line every `interval` seconds and
one at the end — no carriage returns, no escape codes. A phase with nothing to do draws nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Any, Iterator

_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("caikit_phase", default="")
_ACTIVE: contextvars.ContextVar["Progress | None"] = contextvars.ContextVar("caikit_progress", default=None)
PLAIN_INTERVAL = 30.0  # seconds between plain progress lines outside a terminal


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """The requests sent inside this block (and the tasks it starts) count towards phase `name`."""
    token = _PHASE.set(name)
    try:
        yield
    finally:
        _PHASE.reset(token)


def current_phase(default: str = "") -> str:
    return _PHASE.get() or default


def count_request() -> None:
    """One request of the current phase finished (a no-op outside a `Progress.active()` block)."""
    progress = _ACTIVE.get()
    if progress is not None:
        progress.request_done(current_phase())


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Requests finished per phase, items finished, tokens, cost and failures; drawn as a bar or as plain lines.

    `per_item` maps each phase to the requests one item takes in it ({"answer": 1, "critique": 2, ...}); without
    it the total is not known and the bar counts items (still naming the phases' request counts)."""

    def __init__(self, desc: str, items: int, *, per_item: dict[str, int] | None = None, meter=None,
                 enabled: bool = True, stream=None, interval: float | None = None) -> None:
        self.desc, self.items, self.meter = desc, items, meter
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.stream = stream or sys.stderr
        self.per_item = dict(per_item or {})
        self.done: dict[str, int] = {name: 0 for name in self.per_item}
        self.items_done = self.failed = 0
        self.started = self.last_line = time.monotonic()
        self.enabled = enabled and items > 0
        self.total = items * sum(self.per_item.values()) if self.per_item else items
        self.bar = None
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit="req" if self.per_item else "it", dynamic_ncols=True,
                            file=self.stream, smoothing=0.1)

    @contextlib.contextmanager
    def active(self) -> Iterator["Progress"]:
        """Requests finished in this block (and in the tasks it starts) are counted here; the bar closes after."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            self.close()

    # -- counting
    def request_done(self, name: str) -> None:
        name = name or "requests"  # a stage that names no phases
        self.done[name] = self.done.get(name, 0) + 1
        if self.per_item:
            self._advance()

    def item_done(self, ok: bool) -> None:
        self.items_done += 1
        self.failed += not ok
        if not self.per_item:
            self._advance()
        else:
            self._refresh()

    # -- drawing
    def _phases(self) -> str:
        parts = []
        for name, n in self.done.items():
            want = self.per_item.get(name)
            parts.append(f"{name} {n}/{want * self.items}" if want else f"{name} {n}")
        return ", ".join(parts)

    def _postfix(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.meter is not None:
            out |= {"tok": f"{self.meter.usage.total_tokens:,}", "cost": f"${self.meter.cost_usd:.4f}"}
        return out | {"failed": self.failed}

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self._refresh()
        elif self.enabled and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} [{self._phases()}]" if self.done else self.desc, refresh=False)
            self.bar.set_postfix(self._postfix(), refresh=False)

    def progressed(self) -> int:
        return sum(self.done.values()) if self.per_item else self.items_done

    def _line(self) -> None:
        self.last_line = now = time.monotonic()
        done, elapsed = self.progressed(), now - self.started
        unit = "requests" if self.per_item else "items"
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_clock((self.total - done) / rate)}" if rate > 0 and done < self.total else ""
        phases = f" ({self._phases()})" if self.done else ""
        extra = ", ".join(f"{k} {v}" for k, v in self._postfix().items())
        print(f"{self.desc}: {done}/{self.total} {unit}{phases}, {rate:.2f}/s, elapsed {_clock(elapsed)}{eta}, "
              f"{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.close()
        elif self.enabled:
            self._line()


class PlainBar:
    """tqdm's update / set_postfix / close for a trainer outside a terminal: one plain line per interval."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step", stream=None,
                 interval: float | None = None) -> None:
        self.total, self.n, self.first, self.desc, self.unit = total, initial, initial, desc, unit
        self.stream = stream or sys.stderr
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = time.monotonic()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last_line = now = time.monotonic()
        elapsed = now - self.started
        rate = (self.n - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_clock((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.2f}/s, elapsed {_clock(elapsed)}{eta}{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.n > self.first:
            self._line()


def step_bar(total: int, *, initial: int = 0, desc: str = "", unit: str = "step", disable: bool = False):
    """A trainer's progress: a tqdm bar in a terminal, plain lines elsewhere (a log file keeps no carriage returns)."""
    from tqdm.auto import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable)
    return PlainBar(total, initial=initial, desc=desc, unit=unit)
