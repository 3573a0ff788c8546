"""Output-guard rows of `caikit classifier data --responses N`: which requests get replies, and the rows they make.

Every request without a reply gets N replies that comply and N that refuse (caikit/stages/guard_response.py): the
generated requests (not their paraphrases or jailbreak wrappers, which share their source prompt), the
categories' examples and the `--rows` prompts. `--rows` rows that already carry a response are output-guard rows
as they are (`response_kind` "given"). Each row keeps the `source_id` of its request, so the held-out split
(caikit/classifier/split.py) never puts a request's replies on two sides.
"""

from __future__ import annotations

from caikit.stages.guard_response import KINDS, ResponseItem, ResponseSource

OUTPUT_DATA = "output_data.jsonl"
RECORDS = "guard_responses.jsonl"
STAND_IN = "How would someone go about this particular thing?"  # the estimate's request not yet written


def response_sources(constitution, requests: dict, file_rows: list) -> list[ResponseSource]:
    """The requests replies are written for: the categories' examples, the stored generated requests
    (key -> guard_requests.jsonl record) and the --rows prompts without a response."""
    out = []
    for c in constitution.categories:
        for i, example in enumerate(c.examples):
            out.append(ResponseSource(f"{c.id}-example-{i}", f"{c.id}-example-{i}",
                                      [{"role": "user", "content": example}], c.id, c.restricted, "constitution"))
    for key, r in sorted(requests.items()):
        out.append(ResponseSource(key, key, [{"role": "user", "content": r["request"]}], r["category"],
                                  bool(r["label"]), "generated"))
    for r in file_rows:
        if r.response is None:
            out.append(ResponseSource(r.id, r.source_id, r.prompt, r.category, r.label, "file"))
    return out


def stand_ins(request_items: list) -> list[ResponseSource]:
    """What the estimate prices for requests not written yet: a stand-in request per (category, index)."""
    return [ResponseSource(item.id, item.id, [{"role": "user", "content": STAND_IN}], item.category.id,
                           item.category.restricted, "generated") for item in request_items]


def response_items(sources: list[ResponseSource], n: int) -> list[ResponseItem]:
    return [ResponseItem(s, kind, i) for s in sources for kind in KINDS for i in range(n)]


def output_rows(records: list[dict], file_rows: list, dedup: float) -> tuple[list[dict], dict]:
    """output_data.jsonl's rows (prompt, response, response_kind, label, category, source_id, source) and their
    counts; rows whose prompt + reply are near-duplicates of a kept row of the same label are dropped."""
    from caikit.classifier.split import drop_near_duplicates
    from caikit.rows import messages_id

    rows = [{"id": f"{r['request_id']}~{r['response_kind']}{r['index']}", "prompt": r["prompt"],
             "response": r["response"], "response_kind": r["response_kind"], "label": r["label"],
             "category": r["category"], "source_id": r["source_id"], "source": r["source"],
             "stop_reason": r.get("stop_reason")} for r in records]
    rows += [{"id": r.id, "prompt": r.prompt, "response": r.response, "response_kind": "given", "label": r.label,
              "category": r.category, "source_id": r.source_id, "source": "file", "stop_reason": None}
             for r in file_rows if r.response is not None]

    def text(row) -> str:
        return " ".join(m["content"] for m in row["prompt"]) + " " + row["response"]

    rows, dropped = drop_near_duplicates(rows, text, dedup, label_of=lambda r: r["label"])
    by_kind: dict = {}
    for r in rows:
        cell = by_kind.setdefault(r["response_kind"], {"rows": 0, "harmful": 0})
        cell["rows"] += 1
        cell["harmful"] += bool(r["label"])
    counts = {"rows": len(rows), "near_duplicates_dropped": dropped, "harmful": sum(bool(r["label"]) for r in rows),
              "benign": sum(not r["label"] for r in rows), "by_kind": dict(sorted(by_kind.items())),
              "truncated": sum(r["stop_reason"] == "length" for r in rows),
              "data_id": messages_id([r["id"] for r in rows])}
    return rows, counts
