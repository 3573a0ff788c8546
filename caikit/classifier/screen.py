"""`caikit generate --guard DIR`: an input guard screens the prompts before anything is sent, an output guard the
final revisions when sft.jsonl is written. `--guard-action flag` counts what it flags; `drop` also leaves it out.
The counts go to stats.json (`guard`) and from there to the dataset card."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Screen:
    guard: object  # caikit.classifier.model.Guard
    path: str
    action: str
    stats: dict = field(default_factory=dict)

    def revisions(self, sft: list[dict]) -> list[dict]:
        """SFT examples (prompt, completion) after the output guard; the input guard leaves them as they are."""
        if self.guard.target != "output" or not sft:
            return sft
        scores = self.guard.score([e["prompt"] for e in sft], [e["completion"][-1]["content"] for e in sft])
        flagged = [s >= self.guard.threshold for s in scores]
        self.stats.update(flagged=sum(flagged), screened=len(sft),
                          dropped=sum(flagged) if self.action == "drop" else 0)
        return [e for e, f in zip(sft, flagged) if not (f and self.action == "drop")]


def screen_prompts(cfg, prompts: list) -> tuple[list, Screen | None]:
    """(prompts to run, the Screen for finalisation) for --guard; an input guard flags / drops prompts here."""
    if not getattr(cfg, "guard", ""):
        return prompts, None
    from caikit.classifier.model import load_guard

    guard = load_guard(cfg.guard)
    screen = Screen(guard, cfg.guard, cfg.guard_action,
                    {"path": cfg.guard, "target": guard.target, "action": cfg.guard_action,
                     "threshold": guard.threshold, "flagged": 0, "screened": 0, "dropped": 0})
    if guard.target == "input":
        scores = guard.score([row.messages for row in prompts])
        flagged = [s >= guard.threshold for s in scores]
        screen.stats.update(flagged=sum(flagged), screened=len(prompts),
                            dropped=sum(flagged) if cfg.guard_action == "drop" else 0)
        if cfg.guard_action == "drop":
            prompts = [row for row, f in zip(prompts, flagged) if not f]
    return prompts, screen


def screen_pairs(rows: list[dict], guard) -> tuple[list[dict], dict]:
    """Preference pairs after an output guard (`caikit train online-dpo --guard DIR`): a flagged answer is never
    chosen over an unflagged one (the pair is turned round, p_chosen 1.0, a rule label), and a pair whose answers
    are both flagged is dropped (nothing safe to prefer). Returns (rows, counts)."""
    if not rows:
        return rows, {"pairs": 0, "turned": 0, "dropped": 0}
    prompts = [r["prompt"] for r in rows]
    text = lambda turns: "\n\n".join(m["content"] for m in turns)  # noqa: E731
    chosen = guard.score(prompts, [text(r["chosen"]) for r in rows])
    rejected = guard.score(prompts, [text(r["rejected"]) for r in rows])
    out, turned, dropped = [], 0, 0
    for row, c, r in zip(rows, chosen, rejected):
        c_flag, r_flag = c >= guard.threshold, r >= guard.threshold
        if c_flag and r_flag:
            dropped += 1
            continue
        if c_flag:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"], "p_chosen": 1.0,
                   "source": f"{row.get('source', '')} (turned by the guard)".strip()}
            turned += 1
        out.append(row)
    return out, {"pairs": len(rows), "turned": turned, "dropped": dropped}
