"""`caikit classifier data`: labelled rows for guards, generated from a constitution's categories.

Per category, `--per-category` user requests written by the model (restricted categories: harmful requests;
permitted ones: harmless look-alikes), each with `--paraphrases` model rewrites (every other one in another
language); the categories' own examples; `--augment` model-free jailbreak wrappers of every request
(caikit/classifier/augment.py: role-play, prefix injection, base64, leetspeak, translation, fiction, multi-turn);
and `--rows` files of labelled rows (people's) through the row reader. Near-duplicates are dropped; each row keeps
its `source_id` (the request it was made from), so `caikit classifier train` holds out whole source prompts.
With `--responses N`, output-guard rows too: after the requests, each request gets N replies that comply and N
that refuse from the same backend (caikit/stages/guard_response.py, caikit/classifier/responses.py), labelled
harmful when the request's category is restricted and the reply complies.

The model work runs on the shared runner: a rerun (after a crash or kill -9) sends only what is missing, the
request log makes nothing paid twice, the estimate and --max-cost gate API spending, failures are counted in
stats.json and above --max-failure-rate exit 1. Writes, in --out: data.jsonl (prompt, label, category,
source_id, source, augmentation), guard_requests.jsonl (one record per (category, index)), failures.jsonl,
requests.jsonl, usage.json, stats.json; with --responses, output_data.jsonl (prompt, response, response_kind,
label, category, source_id, source) and guard_responses.jsonl (one record per (request, kind, index)).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from caikit.backends.registry import BackendOptions, make_backend
from caikit.config import option
from caikit.errors import UserError
from caikit.estimate import confirm_cost, dry_ask
from caikit.rundir import RunDir, note
from caikit.runner import Runner, open_backend, pending, run_then_close
from caikit.stages.guard_request import GuardItem, GuardSetup, build_guard_item
from caikit.stages.guard_response import ResponseItem, ResponseSetup, build_response_item

RECORDS = "guard_requests.jsonl"
DATA = "data.jsonl"


@dataclasses.dataclass
class ClassifierDataConfig(BackendOptions):
    constitution: str = option("hhh", help="constitution whose `categories:` the rows are generated from")
    out: str = option("outputs/guard-data", help="run directory")
    per_category: int = option(8, low=0, high=1_000_000, help="model-written requests per category")
    paraphrases: int = option(1, low=0, high=16, help="model rewrites of each request (every other one in another "
                                                      "language)")
    augment: int = option(2, low=0, high=7, help="model-free jailbreak wrappers per request (role-play, prefix "
                                                 "injection, base64, leetspeak, translation, fiction, multi-turn)")
    rows: list[str] = option([], help="labelled rows from files (prompt or messages, label, optional category, "
                                      "source_id), e.g. people's; `bundled` = the bundled suites")
    dedup: float = option(0.8, above=0, high=1, help="drop rows whose word-3-gram Jaccard with a kept row of the same "
                                                     "label is at least this")
    responses: int = option(0, low=0, high=16, help="output-guard data: for every request (generated, the categories' "
                                                    "examples, --rows prompts without a response) this many replies "
                                                    "that comply and as many that refuse, written by the same model "
                                                    "into output_data.jsonl; a reply is labelled harmful when its "
                                                    "request's category is restricted and it complies (0: input-guard "
                                                    "data only)")
    response_max_tokens: int = option(256, low=8, high=100_000, help="--responses: max new tokens per reply")
    temperature: float = option(1.0, low=0, high=2, help="sampling temperature of the requests, paraphrases and "
                                                         "replies")
    max_tokens: int = option(64, low=8, high=100_000, help="max new tokens per request or paraphrase")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the sampling and the augmentations")
    parse_retries: int = option(2, low=0, high=20, help="resamples of an unusable answer before it is a failure")
    max_failure_rate: float = option(0.5, low=0, high=1, help="exit 1 when more than this share of the items failed")
    progress: bool = option(True, help="show a progress bar")


def load_categories(cfg: ClassifierDataConfig):
    from caikit.constitution import load_constitution

    constitution = load_constitution(cfg.constitution)
    if not constitution.categories:
        raise UserError("has no 'categories:' to generate guard data from (see docs/classifiers.md)",
                        path=str(constitution.path))
    return constitution


def price(cfg: ClassifierDataConfig, setup: GuardSetup, items: list[GuardItem],
          reply_setup: ResponseSetup | None = None, replies: list[ResponseItem] = ()):
    """The estimate: both stages' own chains run against a DryAsk (replies to requests not yet written are
    priced on a stand-in request)."""
    import asyncio

    from caikit.stages.guard_response import response_plan

    ask = dry_ask(cfg.model_name(), fill=0.6, honours_n=cfg.provider().honours_n)

    async def chains():
        for item in items:
            await build_guard_item(ask, setup, item, "estimate", "estimate")
        for reply in replies:
            await ask([response_plan(reply_setup, reply)])

    asyncio.run(chains())
    return ask.finish("classifier-data", cfg.backend, cfg.model_name(), len(items) + len(replies), cfg.prices)


def assemble(cfg: ClassifierDataConfig, constitution, records: dict, file_rows: list) -> tuple[list[dict], dict]:
    """data.jsonl's rows from the stored records, the categories' examples, augmentations and --rows files."""
    from caikit.classifier.augment import AUGMENTATIONS, augmented_rows
    from caikit.classifier.split import drop_near_duplicates
    from caikit.rows import messages_id

    base = []
    for c in constitution.categories:
        for i, example in enumerate(c.examples):
            base.append({"id": f"{c.id}-example-{i}", "prompt": example, "label": c.restricted, "category": c.id,
                         "source_id": f"{c.id}-example-{i}", "source": "constitution", "augmentation": ""})
    generated = []
    for key, r in sorted(records.items()):
        generated.append({"id": key, "prompt": r["request"], "label": r["label"], "category": r["category"],
                          "source_id": key, "source": "generated", "augmentation": ""})
        for k, text in enumerate(r.get("paraphrases") or []):
            generated.append({"id": f"{key}~paraphrase{k}", "prompt": text, "label": r["label"],
                              "category": r["category"], "source_id": key, "source": "generated",
                              "augmentation": "paraphrase" if k % 2 == 0 else "paraphrase-translated"})
    seeds = base + [g for g in generated if not g["augmentation"]]
    wrapped = augmented_rows(seeds, list(AUGMENTATIONS), cfg.augment, cfg.seed) if cfg.augment else []
    files = []
    for r in file_rows:
        files.append({"id": r.id, "prompt": r.prompt, "label": r.label, "category": r.category,
                      "source_id": r.source_id, "source": "file", "augmentation": "",
                      **({"response": r.response} if r.response is not None else {})})
    rows = base + generated + wrapped + files
    for row in rows:
        row["prompt"] = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user",
                                                                                "content": row["prompt"]}]
    rows, dropped = drop_near_duplicates(rows, lambda r: " ".join(m["content"] for m in r["prompt"]), cfg.dedup,
                                         label_of=lambda r: r["label"])
    counts = {"rows": len(rows), "near_duplicates_dropped": dropped,
              "by_source": _count(rows, "source"), "by_augmentation": _count(rows, "augmentation"),
              "by_category": _count(rows, "category"), "harmful": sum(r["label"] for r in rows),
              "benign": sum(not r["label"] for r in rows), "data_id": messages_id([r["id"] for r in rows])}
    return rows, counts


def _count(rows: list[dict], key: str) -> dict:
    out: dict = {}
    for r in rows:
        out[r[key] or "none"] = out.get(r[key] or "none", 0) + 1
    return dict(sorted(out.items()))


def run_classifier_data(cfg: ClassifierDataConfig) -> int:
    from caikit.categories import categories_hash
    from caikit.classifier import responses as out_rows
    from caikit.eval.refusal import is_refusal
    from caikit.store import latest_by_id, write_jsonl_atomic

    constitution = load_categories(cfg)
    file_rows = []
    if cfg.rows:
        from caikit.classifier.train import read_rows

        file_rows = read_rows(cfg.rows)
    backend = make_backend(cfg)
    setup = GuardSetup(paraphrases=cfg.paraphrases, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                       seed=cfg.seed, model=f"{cfg.backend}:{cfg.model_name()}")
    reply_setup = ResponseSetup(temperature=cfg.temperature, max_tokens=cfg.response_max_tokens, seed=cfg.seed,
                                model=setup.model, refuses=is_refusal)
    items = [GuardItem(c, i) for c in constitution.categories for i in range(cfg.per_category)]
    identity = {"stage": "classifier-data", "categories_hash": categories_hash(constitution.categories),
                "model": setup.model}
    with RunDir.open(cfg.out, "classifier-data", identity, cfg, command="classifier data") as run:
        records, failures = run.jsonl(RECORDS), run.jsonl(RunDir.FAILURE_LOG)
        replies_file = run.jsonl(out_rows.RECORDS)

        def stored_requests() -> dict:
            wanted = {setup.key(item) for item in items}
            return {k: v for k, v in latest_by_id(run.jsonl(RECORDS).iter()).items() if k in wanted}

        def reply_items() -> list[ResponseItem]:
            sources = out_rows.response_sources(constitution, stored_requests(), file_rows)
            return out_rows.response_items(sources, cfg.responses)

        todo, done = pending(items, setup.key, records)
        if not cfg.provider().in_process:
            priced = []
            if cfg.responses:  # replies to stored requests not yet answered, and to those still to be written
                unanswered, _ = pending(reply_items(), reply_setup.key, replies_file)
                priced = [item for item, _ in unanswered] + out_rows.response_items(
                    out_rows.stand_ins([item for item, _ in todo]), cfg.responses)
            if todo or priced:
                confirm_cost(price(cfg, setup, [item for item, _ in todo], reply_setup, priced), cfg)
        cached, meter = open_backend(run, backend, cfg)
        runner = Runner(cached, parse_retries=cfg.parse_retries, progress=cfg.progress)
        note("classifier data", f"{len(items)} requests to write ({len(constitution.categories)} categories x "
                                f"{cfg.per_category}), {done} already done, {len(todo)} to go -> {run.path}")
        concurrency = max(1, backend.batch_size if cfg.provider().in_process else cfg.requests_in_flight(None) * 2)
        replies: list[ResponseItem] = []

        async def both_stages():
            await runner.run(todo, lambda item, key: build_guard_item(runner.ask, setup, item, key, run.run_id),
                             records=records, failures=failures, stage="classifier-data", run_id=run.run_id,
                             concurrency=concurrency, meter=meter, item_label=lambda item: item.id,
                             desc="classifier data: requests")
            if not cfg.responses:
                return
            replies.extend(reply_items())
            reply_todo, reply_done = pending(replies, reply_setup.key, replies_file)
            note("classifier data", f"{len(replies)} replies to write ({len(replies) // (2 * cfg.responses)} "
                                    f"requests x {cfg.responses} x comply/refuse), {reply_done} already done, "
                                    f"{len(reply_todo)} to go")
            await runner.run(reply_todo, lambda item, key: build_response_item(runner.ask, reply_setup, item, key,
                                                                               run.run_id),
                             records=replies_file, failures=failures, stage="classifier-data-response",
                             run_id=run.run_id, concurrency=concurrency, meter=meter, item_label=lambda item: item.id,
                             desc="classifier data: replies")

        try:
            run_then_close(both_stages(), cached)
        finally:
            records.close()
            replies_file.close()
            failures.close()
        stored = stored_requests()
        logged = latest_by_id(run.jsonl(RunDir.FAILURE_LOG).iter())
        failed = [logged[k] for k in (setup.key(item) for item in items) if k in logged and k not in stored]
        reply_keys = [reply_setup.key(item) for item in replies]
        answered = latest_by_id(run.jsonl(out_rows.RECORDS).iter())
        reply_records = [answered[k] for k in reply_keys if k in answered]
        reply_failed = [logged[k] for k in reply_keys if k in logged and k not in answered]
        write_jsonl_atomic(run.file(RunDir.FAILURES), failed + reply_failed)
        rows, counts = assemble(cfg, constitution, stored, file_rows)
        write_jsonl_atomic(run.file(DATA), rows)
        usage = meter.summary()
        run.write_json(RunDir.USAGE, usage)
        stats = {"items": len(items), "generated": len(stored), "failures": len(failed), **counts,
                 "usage": usage, "constitution": constitution.name,
                 "categories_hash": identity["categories_hash"]}
        if cfg.responses:
            output, output_counts = out_rows.output_rows(reply_records, file_rows, cfg.dedup)
            write_jsonl_atomic(run.file(out_rows.OUTPUT_DATA), output)
            stats["responses"] = {"items": len(replies), "generated": len(reply_records),
                                  "failures": len(reply_failed), **output_counts}
        run.write_json(RunDir.STATS, stats)
    note("classifier data", f"{len(stored)}/{len(items)} requests, {len(failed)} failures, {counts['rows']} rows "
                            f"({counts['harmful']} harmful, {counts['benign']} benign; "
                            f"{counts['near_duplicates_dropped']} near-duplicates dropped), "
                            f"{meter.usage.total_tokens:,} tokens, ${meter.cost_usd:.4f} -> {Path(cfg.out) / DATA}")
    if cfg.responses:
        r = stats["responses"]
        note("classifier data", f"{r['generated']}/{r['items']} replies, {r['failures']} failures, {r['rows']} "
                                f"output-guard rows ({r['harmful']} harmful, {r['benign']} benign) -> "
                                f"{Path(cfg.out) / out_rows.OUTPUT_DATA}")
    if not rows or (cfg.responses and not stats["responses"]["rows"]):
        note("classifier data", "no rows came out: exit 1")
        return 1
    for what, bad, of in (("items", failed, items), ("replies", reply_failed, replies)):
        if bad and len(bad) / max(1, len(of)) > cfg.max_failure_rate:
            note("classifier data", f"{len(bad)} of {len(of)} {what} failed, more than --max-failure-rate "
                                    f"{cfg.max_failure_rate:g}: exit 1 (rerun to retry them)")
            return 1
    return 0
