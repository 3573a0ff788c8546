"""`caikit <command>`: one thin function per command; the work lives in the modules they call.

Commands are registered in COMMANDS with the module that holds their config dataclass and entry
point, imported only when that command runs (so `caikit --help` does not import torch).
Every command accepts `--config FILE.yaml`; flags typed on the command line win over the file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from caikit.errors import MultiError, UserError


@dataclass(frozen=True)
class Command:
    name: str  # "generate", "train sft", ...
    module: str  # where the config class and entry function live
    config: str  # dataclass name in `module`
    func: str  # entry function name in `module`, called with the resolved config
    help: str
    positional: tuple[str, ...] = ()


COMMANDS = [
    Command("init", "caikit.scaffold", "InitConfig", "init", "write a starter constitution, prompts and run config"),
    Command("constitution validate", "caikit.constitution", "ValidateConfig", "validate_command",
            "check constitution YAML files; one FILE:LINE line per problem", ("files",)),
    Command("generate", "caikit.pipeline", "GenerateConfig", "run_generate",
            "SL-CAI: answer -> critique -> revise; writes traces.jsonl and sft.jsonl"),
    Command("judge", "caikit.judging", "JudgeConfig", "run_judge", "RLAIF: AI-judged preference pairs"),
    Command("estimate", "caikit.estimate", "EstimateConfig", "run_estimate",
            "expected requests, tokens and cost of a generate or judge run (online and --batch-api)", ("stage",)),
    Command("merge", "caikit.merge", "MergeConfig", "run_merge",
            "combine the run dirs of --shard i/n runs into one, dropping duplicates", ("dirs",)),
    Command("export", "caikit.export", "ExportConfig", "export_command",
            "export a run dir as datasets / parquet / jsonl", ("run_dir",)),
    Command("train sft", "caikit.train.sft", "SFTConfig", "train", "supervised fine-tuning on revisions"),
    Command("train reward", "caikit.train.reward", "RewardConfig", "train", "Bradley-Terry reward model"),
    Command("train dpo", "caikit.train.dpo", "DPOConfig", "train",
            "preference optimisation on pairs: DPO, cDPO, IPO, ORPO, SimPO (--loss)"),
    Command("train ppo", "caikit.train.ppo", "PPOConfig", "train", "PPO against a reward model with a KL penalty"),
    Command("train grpo", "caikit.train.grpo", "GRPOConfig", "train",
            "GRPO / RLOO: G samples per prompt, group-relative advantages, KL to the reference"),
    Command("train kto", "caikit.train.kto", "KTOConfig", "train", "KTO on thumbs-up / thumbs-down labels"),
    Command("score", "caikit.train.reward", "ScoreConfig", "score_command", "reward-model scores (0-1) for responses"),
    Command("eval judge", "caikit.eval.agreement", "AgreementConfig", "run_agreement",
            "judge-vs-human agreement on labelled pairs"),
    Command("eval", "caikit.eval.compare", "EvalConfig", "run_eval", "before/after harmlessness and helpfulness"),
    Command("report", "caikit.report.html", "ReportConfig", "report_command", "HTML report of a run dir", ("run_dir",)),
    Command("demo", "caikit.run", "DemoConfig", "run_demo", "the whole loop on the embedded model, on CPU"),
    Command("run", "caikit.run", "RunConfig", "run_pipeline", "a whole pipeline from one YAML file", ("config_file",)),
]


def _match(argv: list[str]) -> tuple[Command | None, list[str]]:
    """Longest command name that prefixes argv."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        for cmd in COMMANDS:
            if cmd.name == name:
                return cmd, argv[words:]
    return None, argv


def _usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: caikit <command> [options]   (caikit <command> --help for its options)", "", "commands:"]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS]
    return "\n".join(lines)


def _run(cmd: Command, rest: list[str]):
    from caikit.config import add_dataclass_args, resolve

    module = importlib.import_module(cmd.module)
    cls = getattr(module, cmd.config)
    parser = argparse.ArgumentParser(prog=f"caikit {cmd.name}", description=cmd.help)
    if "config_file" not in cmd.positional:
        parser.add_argument("--config", dest="_config_file", metavar="FILE", default=None,
                            help="YAML file with options (flags on the command line win)")
    add_dataclass_args(parser, cls, positional=cmd.positional)
    args = parser.parse_args(rest)
    config_file = vars(args).pop("_config_file", None)
    cfg = resolve(cls, args, config_file=config_file)
    return getattr(module, cmd.func)(cfg)


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning. With spinning, torch on a CPU shared with any
    # other busy process ran 5-8x slower here (SmolLM2 batch-16 generation: 8 vs 41 tok/s on 2 cores).
    # Must be set before torch is first imported; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from caikit import __version__

        print(__version__)
        return 0
    cmd, rest = _match(argv)
    if cmd is None:
        print(f"caikit: unknown command '{' '.join(argv[:2])}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        result = _run(cmd, rest)
    except MultiError as e:
        for line in e.messages:
            print(line, file=sys.stderr)
        return e.exit_code
    except UserError as e:
        print(f"caikit {cmd.name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"caikit {cmd.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if os.environ.get("CAIKIT_DEBUG"):
        print(f"result: {result!r}", file=sys.stderr)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
