"""`caikit run CONFIG.yaml` and `caikit demo`: the whole loop from one file, resumable stage by stage.

The run file names a constitution, a prompt source and a `stages:` mapping; each stage's options are
those of its own command (`caikit generate --help`, `caikit train dpo --help`, ...). Stages run in the
fixed order below, each in RUN_DIR/<stage>/, wired to the outputs of the ones before it. A stage is
skipped when state.json records it done with the same config hash (which folds in the hashes of the
stages it reads), so a rerun resumes and a changed stage reruns from there on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import importlib
import time
from pathlib import Path
from typing import Any, Callable

from caikit.commands import RUN_STAGES as STAGES
from caikit.config import did_you_mean, from_dict, load_yaml, option, save_config
from caikit.errors import UserError
from caikit.records import canonical_json
from caikit.rundir import RunDir, lock_directory, note
from caikit.store import read_json, write_json_atomic

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TOP_LEVEL_KEYS = {"name", "out", "constitution", "prompts", "eval_prompts", "policy", "seed", "stages", "description"}

# caikit/configs links to the repo-level configs/, so the same path works in a checkout and in a wheel
BUNDLED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclasses.dataclass
class RunConfig:
    config_file: str = option("", help="run config YAML (see configs/ for examples)")
    out: str = option("", help="override the run directory named in the file")
    force: str = option("", help="rerun this stage (and all after it) even if its outputs are up to date")
    report: bool = option(True, help="write RUN_DIR/report.html at the end")

    def validate(self) -> None:
        if not self.config_file:
            raise UserError("usage: caikit run CONFIG.yaml")


@dataclasses.dataclass
class DemoConfig:
    out: str = option("outputs/demo", help="run directory")
    run_config: str = option("", help="run config to use instead of the bundled configs/demo-cpu.yaml")
    force: str = option("", help="rerun this stage (and all after it)")


def _stage_inputs(name: str, spec: dict[str, Any], run: dict[str, Any], run_dir: Path, done: list[str]) -> dict:
    """The options a stage gets from the run file and from the stages before it (its own keys win)."""
    policy = run.get("policy", "smollm2")
    seed = run.get("seed", 0)
    prior = {s: str(run_dir / s) for s in done}
    prior |= {"online_dpo": f"{prior['online_dpo']}/policy"} if "online_dpo" in prior else {}  # the last iteration
    last_model = next((prior[s] for s in ("online_dpo", "dpo", "ppo", "sft") if s in prior and s != name), None)
    sft_model = prior.get("sft", policy)
    wired: dict[str, Any] = {"out": str(run_dir / name)}
    if name == "generate":
        wired |= {"constitution": run.get("constitution", "anthropic-cai"), "prompts": run.get("prompts", ""),
                  "seed": seed}
    elif name == "judge":
        wired |= {"constitution": run.get("constitution", "anthropic-cai"), "seed": seed}
        if "generate" in prior:
            wired |= {"pairs": "revision", "from_dir": prior["generate"]}
        else:
            wired |= {"pairs": "samples", "prompts": run.get("prompts", "")}
    elif name == "sft":
        wired |= {"model": policy, "data": prior.get("generate", ""), "seed": seed}
    elif name == "reward":
        wired |= {"model": policy, "data": prior.get("judge", ""), "seed": seed}
        if (spec or {}).get("data") == "human":  # the human-labelled pairs caikit ships (not a path a file can name)
            from caikit.prompts import bundled_human_reward_pairs_path

            spec = {**spec, "data": str(bundled_human_reward_pairs_path())}
    elif name == "dpo":
        wired |= {"model": sft_model, "data": prior.get("judge", ""), "seed": seed}
    elif name == "ppo":
        wired |= {"policy": sft_model, "reward_model": prior.get("reward", ""), "prompts": run.get("prompts", ""),
                  "seed": seed}
    elif name == "online_dpo":
        wired |= {"policy": sft_model, "prompts": run.get("prompts", ""),
                  "constitution": run.get("constitution", "anthropic-cai"), "seed": seed}
    elif name == "eval":
        wired |= {"before": policy, "after": last_model or policy, "constitution": run.get("constitution", "hhh"),
                  "prompts": run.get("eval_prompts", ""), "seed": seed}
        if "reward" in prior:
            wired["reward_model"] = prior["reward"]
    elif name == "depth":  # the last trained model against the policy it started from
        wired |= {"before": policy, "after": last_model or policy, "seed": seed}
    return wired | dict(spec or {})


def _load_run_file(path: str) -> dict[str, Any]:
    run = load_yaml(path)
    unknown = set(run) - TOP_LEVEL_KEYS
    if unknown:
        first = sorted(map(str, unknown))[0]
        hint = did_you_mean(first, TOP_LEVEL_KEYS) or f" (known: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        raise UserError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}{hint}", path=path)
    stages = run.get("stages") or {}
    if not isinstance(stages, dict) or not stages:
        raise UserError("'stages' must map stage names to their options", path=path)
    bad = set(stages) - set(STAGES)
    if bad:
        first = sorted(map(str, bad))[0]
        hint = did_you_mean(first, STAGES) or f" (known: {', '.join(STAGES)})"
        raise UserError(f"unknown stage(s) {', '.join(sorted(map(str, bad)))}{hint}", path=path)
    for key in ("name", "out"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise UserError(f"'{key}' must be text, got {run[key]!r}"[:120], path=path)
    for name, spec in stages.items():
        if spec is not None and not isinstance(spec, dict):
            raise UserError(f"stage '{name}' options must be a mapping", path=path)
    return run


def _build_stage_configs(run: dict[str, Any], run_dir: Path, source: str) -> list[tuple[str, Any, Callable]]:
    """Resolve every stage's typed config up front, so a typo fails before hours of work."""
    planned, done = [], []
    for name, command in STAGES.items():
        if name not in run["stages"]:
            continue
        module = importlib.import_module(command.module)
        cls = getattr(module, command.config)
        cfg = from_dict(cls, _stage_inputs(name, run["stages"][name], run, run_dir, done),
                        source=f"{source}: stages.{name}")
        check = getattr(cfg, "validate", None)
        if callable(check):
            check()
        planned.append((name, cfg, getattr(module, command.func)))
        done.append(name)
    return planned


def run_dir_of(run: dict[str, Any], out: str, source: str) -> Path:
    """RUN_DIR: --out, the file's `out`, or outputs/<name>, where a name is one plain path component."""
    if out or run.get("out"):
        return Path(out or run["out"])
    name = run.get("name", "run")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"'name' must be letters, digits, '.', '_' or '-' (it names outputs/<name>), got {name!r}",
                        path=source)
    return Path("outputs") / name


def stage_outcome(stage_dir: Path) -> dict[str, Any]:
    """What a finished stage left: its failure count and the counts its successors read (state.json keeps it)."""
    stats = read_json(stage_dir / RunDir.STATS, {}) or {}
    report = read_json(stage_dir / RunDir.REPORT, {}) or {}
    failures = stats.get("failures", (report.get("counts") or {}).get("judge_failures", 0)) or 0
    counts = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"failures": int(failures), "counts": counts}


def exit_code_of(error: BaseException) -> int:
    """The exit status `caikit` gives an error a stage raised (a gate: 3, bad input: 2, Ctrl-C: 130)."""
    if isinstance(error, UserError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, OSError) and error.errno is not None:
        return 2
    return 1


def execute(run_file: str, *, out: str = "", force: str = "", report: bool = True) -> tuple[Path, int]:
    """Run the file's stages in order; returns (RUN_DIR, exit status). A stage is skipped when it finished
    complete (no failure rows) with the same settings and the same inputs; a stage that left failures is
    run again (its resume makes that cheap), and a stage that exits non-zero stops the run."""
    run = _load_run_file(run_file)
    run_dir = run_dir_of(run, out, run_file)
    planned = _build_stage_configs(run, run_dir, run_file)
    if force and force not in {name for name, _, _ in planned}:
        raise UserError(f"--force names stage '{force}', which this run does not have")
    lock = lock_directory(run_dir, "run")
    try:
        return run_dir, _execute(run, run_dir, planned, force, report)
    finally:
        lock.release()


def _execute(run: dict[str, Any], run_dir: Path, planned, force: str, report: bool) -> int:
    save_config(run, run_dir / RunDir.CONFIG)
    state_path = run_dir / RunDir.STATE
    state = read_json(state_path, {"stages": {}})
    upstream, forcing, status = "", False, 0
    for name, cfg, func in planned:
        stage_hash = hashlib.sha256(canonical_json([upstream, dataclasses.asdict(cfg)]).encode()).hexdigest()[:16]
        forcing = forcing or name == force
        previous = state["stages"].get(name, {})
        if not forcing and previous.get("status") == "done" and previous.get("config_hash") == stage_hash:
            note("run", f"{name}: up to date, skipped")
            upstream = hashlib.sha256(canonical_json([stage_hash, previous.get("outcome")]).encode()).hexdigest()[:16]
            continue
        note("run", f"{name} -> {run_dir / name}")
        state["stages"][name] = {"status": "running", "config_hash": stage_hash}
        write_json_atomic(state_path, state)
        start = time.time()
        code = None
        try:
            result = func(cfg)
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0  # trainers return paths
        except BaseException as e:  # the exit status the stage ends with, as the CLI will report it
            code = exit_code_of(e)
            raise
        finally:
            outcome = stage_outcome(run_dir / name)
            done = code == 0 and not outcome["failures"]
            state["stages"][name] = {"status": "done" if done else ("incomplete" if code == 0 else "failed"),
                                     "config_hash": stage_hash, "seconds": round(time.time() - start, 1),
                                     "exit_code": code, "outcome": outcome}
            write_json_atomic(state_path, state)
        upstream = hashlib.sha256(canonical_json([stage_hash, outcome]).encode()).hexdigest()[:16]
        if code:
            note("run", f"{name} exited {code}: stopping here (rerun `caikit run` to retry; finished work is kept)")
            status = int(code)
            break
        if outcome["failures"]:
            note("run", f"{name}: {outcome['failures']} failures left (within its --max-failure-rate): the next "
                        "`caikit run` retries them")
    print_stage_table(state, [name for name, _, _ in planned])
    if report:
        from caikit.report.html import build_report

        path = build_report(run_dir)
        note("run", f"report -> {path}")
    from caikit.report.verdict import verdict_lines

    for line in verdict_lines(run_dir):  # what the report's verdict box says, at the end of the run
        note("run", line)
    return status


def print_stage_table(state: dict[str, Any], names: list[str]) -> None:
    rows = [(n, state["stages"].get(n, {})) for n in names]
    note("run", "stages: " + "; ".join(f"{n} {s.get('status', 'not run')}"
                                      + (f" ({s['outcome']['failures']} failures)" if (s.get("outcome") or {}).get(
                                          "failures") else "") for n, s in rows))


def run_pipeline(cfg: RunConfig) -> int:
    _, status = execute(cfg.config_file, out=cfg.out, force=cfg.force, report=cfg.report)
    return status


def run_demo(cfg: DemoConfig) -> int:
    config = cfg.run_config or str(BUNDLED_CONFIGS / "demo-cpu.yaml")
    start = time.time()
    run_dir, status = execute(config, out=cfg.out, force=cfg.force)
    print(f"caikit demo: finished in {time.time() - start:.0f} s; open {run_dir / 'report.html'}")
    return status
