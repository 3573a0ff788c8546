"""The commands a user types: argument handling, a RunDir, and the runner (or a trainer). Thin by design.

COMMANDS is the one list of commands: `caikit --help`, the CLI's dispatch and `caikit run`'s stages all
read it. A row names the module holding its config dataclass and entry function, imported only when the
command runs (so `caikit --help` does not import torch). Rows with `stage` can be stages of a
`caikit run` file, in the order they are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # "generate", "train sft", ...
    module: str  # where the config class and entry function live
    config: str  # dataclass name in `module`
    func: str  # entry function name in `module`, called with the resolved config
    help: str
    positional: tuple[str, ...] = ()
    stage: str = ""  # its name as a stage of `caikit run` ("" for commands that are not stages)


COMMANDS = [
    Command("init", "caikit.scaffold", "InitConfig", "init", "write a starter constitution, prompts and run config"),
    Command("constitution validate", "caikit.constitution", "ValidateConfig", "validate_command",
            "check constitution YAML files; one FILE:LINE line per problem", ("files",)),
    Command("constitution test", "caikit.commands.constitution_test", "TestConfig", "run_test",
            "run a constitution's cases through a judge: per-principle accuracy, consistency, redundant and "
            "conflicting principles", ("constitution",)),
    Command("constitution stats", "caikit.commands.principle_stats", "StatsConfig", "run_stats",
            "per-principle table of a judge run: pairs judged, consistency, decisiveness, agreement with people",
            ("run_dir",)),
    Command("constitution fit", "caikit.commands.constitution_tools", "FitConfig", "run_fit",
            "fit the judge's principle weights to human labels (cross-validated); writes a new constitution",
            ("constitution",)),
    Command("constitution infer", "caikit.commands.infer_constitution", "InferConfig", "run_infer",
            "the principles that explain a set of preference pairs (an inverse constitution)"),
    Command("constitution diff", "caikit.commands.constitution_diff", "DiffConfig", "run_diff",
            "how often two constitutions' verdicts differ on the same pairs, and which principles drive it",
            ("constitutions",)),
    Command("classifier data", "caikit.classifier.data", "ClassifierDataConfig", "run_classifier_data",
            "labelled rows for guards from the constitution's categories: generated, augmented, and from files"),
    Command("classifier train", "caikit.classifier.train", "ClassifierTrainConfig", "train_guard",
            "a guard (input or streaming output classifier) on labelled rows: frozen features + linear head"),
    Command("classifier eval", "caikit.classifier.evaluate", "ClassifierEvalConfig", "run_classifier_eval",
            "a guard's precision, recall, FPR and AUROC per category, beside a keyword baseline and a judge"),
    Command("classify", "caikit.classifier.evaluate", "ClassifyConfig", "run_classify",
            "score rows (a file or stdin) with a guard: scores and decisions as JSONL"),
    Command("probe", "caikit.commands.probe", "ProbeConfig", "run_probe",
            "what a server supports: models, n, log-probs, system messages, slots, speed"),
    Command("generate", "caikit.commands.generate", "GenerateConfig", "run_generate",
            "SL-CAI: answer -> critique -> revise; writes traces.jsonl and sft.jsonl", stage="generate"),
    Command("judge", "caikit.commands.judge", "JudgeConfig", "run_judge", "RLAIF: AI-judged preference pairs",
            stage="judge"),
    Command("estimate", "caikit.commands.estimate", "EstimateConfig", "run_estimate",
            "expected requests, tokens and cost of a generate or judge run (online and --batch-api)", ("stage",)),
    Command("merge", "caikit.commands.merge", "MergeConfig", "run_merge",
            "combine the run dirs of --shard i/n runs into one, dropping duplicates", ("dirs",)),
    Command("export", "caikit.commands.export", "ExportConfig", "export_command",
            "export a run dir as datasets / parquet / jsonl", ("run_dir",)),
    Command("label", "caikit.label.server", "LabelConfig", "run_label",
            "compare pairs of responses in a local web page; human preference labels", ("source",)),
    Command("label merge", "caikit.label.rows", "MergeLabelsConfig", "run_merge",
            "combine labels files written by several people", ("files",)),
    Command("train sft", "caikit.train.sft", "SFTConfig", "train", "supervised fine-tuning on revisions", stage="sft"),
    Command("train reward", "caikit.train.reward", "RewardConfig", "train", "Bradley-Terry reward model",
            stage="reward"),
    Command("train dpo", "caikit.train.dpo", "DPOConfig", "train",
            "direct preference optimisation (and its variants: --loss sigmoid | cdpo | ipo | orpo | simpo)", stage="dpo"),
    Command("train ppo", "caikit.commands.rl", "PPOConfig", "run_ppo",
            "PPO against a reward model (or a function, or an AI judge's rubric) with a KL penalty", stage="ppo"),
    Command("train online-dpo", "caikit.commands.online_dpo", "OnlineDPOConfig", "run_online_dpo",
            "iterative DPO on AI feedback: sample, judge under the constitution, train, repeat", stage="online_dpo"),
    Command("train grpo", "caikit.commands.rl", "GRPOConfig", "run_grpo",
            "GRPO / RLOO: group-relative policy gradient against a reward model, a function or an AI judge"),
    Command("train kto", "caikit.train.kto", "KTOConfig", "train", "KTO on thumbs-up / thumbs-down labels"),
    Command("score", "caikit.train.reward", "ScoreConfig", "score_command", "reward-model scores (0-1) for responses"),
    Command("eval judge", "caikit.commands.eval_judge", "AgreementConfig", "run_agreement",
            "judge-vs-human agreement on labelled pairs"),
    Command("eval", "caikit.commands.eval", "EvalConfig", "run_eval", "before/after harmlessness and helpfulness",
            stage="eval"),
    Command("depth", "caikit.depth.command", "DepthConfig", "run_depth",
            "how deep did the alignment go: the shift's dimensions, the refusal direction, ablating it, per-token KL",
            stage="depth"),
    Command("report", "caikit.report.html", "ReportConfig", "report_command", "HTML report of a run dir", ("run_dir",)),
    Command("demo", "caikit.commands.run", "DemoConfig", "run_demo", "the whole loop on the embedded model, on CPU"),
    Command("run", "caikit.commands.run", "RunConfig", "run_pipeline", "a whole pipeline from one YAML file",
            ("config_file",)),
]
RUN_STAGES = {c.stage: c for c in COMMANDS if c.stage}  # `caikit run` stages, in pipeline order
