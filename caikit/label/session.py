"""One labeller's pass over the selected pairs: what to show next, and one durable row per action.

Every answer, skip and undo is appended to labels.jsonl as a `caikit.records.Label` row, flushed and
fsync'd before the server answers the page (JsonlFile with fsync_interval 0), so a killed server or a power
cut loses nothing the page showed as saved. State is rebuilt from the file on start: the next pair is the
first one, in the seeded order, without a standing answer by this labeller, and undo works across restarts.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from caikit.errors import UserError
from caikit.label.rows import CHOICES, UNDO, label_id, read_labels
from caikit.label.sources import LabelItem, shown_left
from caikit.records import Label
from caikit.store import JsonlFile

SIDES = ("left", "right", "tie", "skip")  # what the page sends; mapped to a | b through shown_left


class StalePair(Exception):
    """The page answered a pair that is not the current one (a second tab, a double press)."""


class LabelSession:
    def __init__(self, items: list[LabelItem], out: str | Path, *, labeler: str, source: str, seed: int = 0,
                 reveal: bool = False, judge_gate: str = ""):
        self.items = items
        self.judge_gate = judge_gate  # the judge run's gate status, shown beside its verdict with --reveal
        self.undone: dict[str, Any] | None = None  # what the last undo took back, as the page shows it
        self.by_id = {item.pair_id: item for item in items}
        self.out, self.labeler, self.source, self.seed, self.reveal = Path(out), labeler, source, seed, reveal
        self.lock = threading.Lock()
        self.answered: dict[str, str] = {}  # pair id -> this labeller's standing choice
        self.history: list[str] = []  # pair ids in the order they were answered (what undo takes back)
        self.resumed_after: str | None = None  # an undone pair, shown next even if an earlier one is open
        self.last: dict[str, Any] | None = None  # the answer just given, as the page shows it
        if self.out.exists():
            self._replay(read_labels(self.out))
        self.file = JsonlFile(self.out, fsync_interval=0.0)  # fsync every row: see the module docstring
        if not self.out.exists():
            self._create()

    def _create(self) -> None:
        """Create the file and fsync its directory, so the file itself survives a power cut, not only its rows."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.touch()
        fd = os.open(self.out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _replay(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            item = self.by_id.get(row["pair_id"])
            if row.get("labeler") != self.labeler or item is None:
                continue  # another person's rows, or pairs outside this selection
            if (row["prompt"], row["response_a"], row["response_b"]) != (item.prompt, item.response_a,
                                                                         item.response_b):
                raise UserError(f"holds a label for pair {item.pair_id!r} with other text than {self.source} "
                                "has under that id (labels of another run?); use another --out file", path=str(self.out))
            self._apply(item.pair_id, row["choice"])

    def _apply(self, pair_id: str, choice: str) -> None:
        if pair_id in self.history:
            self.history.remove(pair_id)
        if choice == UNDO:
            self.answered.pop(pair_id, None)
        else:
            self.answered[pair_id] = choice
            self.history.append(pair_id)

    def _append(self, item: LabelItem, choice: str, note: str) -> None:
        row = Label(id=label_id(self.labeler, item.pair_id), pair_id=item.pair_id, prompt=item.prompt,
                    response_a=item.response_a, response_b=item.response_b,
                    shown_left=shown_left(self.seed, self.labeler, item.pair_id), choice=choice,
                    labeler=self.labeler, note=note, source=self.source, ai_p_a=item.ai_p_a)
        self.file.append(row.to_dict())  # returns after flush + fsync
        self._apply(item.pair_id, choice)

    def current(self) -> LabelItem | None:
        if self.resumed_after is not None and self.resumed_after not in self.answered:
            return self.by_id[self.resumed_after]
        return next((item for item in self.items if item.pair_id not in self.answered), None)

    def answer(self, pair_id: str, side: str, note: str = "") -> None:
        """Record the person's answer on the current pair: side is left | right | tie | skip."""
        if side not in SIDES:
            raise ValueError(f"choice must be one of {', '.join(SIDES)}")
        with self.lock:
            item = self.current()
            if item is None or item.pair_id != pair_id:
                raise StalePair(pair_id)
            left = shown_left(self.seed, self.labeler, pair_id)
            choice = {"left": left, "right": "b" if left == "a" else "a"}.get(side, side)
            assert choice in CHOICES
            self._append(item, choice, note)
            self.resumed_after, self.undone = None, None
            self.last = {"pair_id": pair_id, "choice": side}
            if self.reveal and item.ai_p_a is not None:  # only after the answer is on disk
                self.last["ai_p_left"] = item.ai_p_a if left == "a" else 1.0 - item.ai_p_a
                self.last["judge_gate"] = self.judge_gate

    def undo(self) -> bool:
        """Withdraw this labeller's latest standing answer; that pair is shown next. False: nothing to undo."""
        with self.lock:
            if not self.history:
                return False
            pair_id = self.history[-1]
            left = shown_left(self.seed, self.labeler, pair_id)
            previous = self.answered[pair_id]
            side = {left: "left", ("b" if left == "a" else "a"): "right"}.get(previous, previous)
            self._append(self.by_id[pair_id], UNDO, "")
            self.resumed_after, self.last = pair_id, None
            self.undone = {"pair_id": pair_id, "choice": side,
                           "position": 1 + [item.pair_id for item in self.items].index(pair_id)}
            return True

    def state(self) -> dict[str, Any]:
        """What the page renders. Never the AI judge's verdict on the pair still to be answered."""
        with self.lock:
            item = self.current()
            pair = None
            if item is not None:
                left = shown_left(self.seed, self.labeler, item.pair_id)
                texts = (item.response_a, item.response_b) if left == "a" else (item.response_b, item.response_a)
                cut = (item.cut_a, item.cut_b) if left == "a" else (item.cut_b, item.cut_a)
                pair = {"pair_id": item.pair_id, "prompt": item.prompt, "left": texts[0], "right": texts[1],
                        "left_cut": cut[0], "right_cut": cut[1]}
            return {"labeler": self.labeler, "total": len(self.items), "done": len(self.answered),
                    "out": str(self.out), "reveal": self.reveal, "can_undo": bool(self.history),
                    "pair": pair, "last": self.last, "undone": self.undone}

    def close(self) -> None:
        self.file.close()
