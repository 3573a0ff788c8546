"""`--report-to`: the trainers' metrics rows, as written to metrics.jsonl, also sent to an experiment tracker.

Each tracker is an optional extra (`pip install 'caikit[tensorboard]'`, `[wandb]`, `[mlflow]`, `[trackio]`),
imported only when asked for; a missing one stops the command before training with exit 2 and the install line.
Metric names are metrics.jsonl's (`loss`, `eval_loss`, `kl`, ...), the step is the row's step, and only numbers
are sent; the run is named after OUT and its parent ("my-run-dpo", "iter-2-dpo"). `caikit train online-dpo` sends
each iteration's DPO run and its own per-iteration figures (iterations.json, step = iteration). Where the run goes
follows each tool's own conventions:

  tensorboard  event files in OUT/tensorboard (read them with `tensorboard --logdir OUT/tensorboard`)
  wandb        project WANDB_PROJECT (default "caikit"); WANDB_MODE=offline works offline
  mlflow       MLFLOW_TRACKING_URI (a server, sqlite:///...), default a file store in OUT/mlruns; experiment
               MLFLOW_EXPERIMENT_NAME or "caikit"
  trackio      project TRACKIO_PROJECT (default "caikit"), its local store (TRACKIO_DIR)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from caikit.errors import UserError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Config values a tracker can show as run parameters (scalars only)."""
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None}


class Tracker:
    """One run in one tracker; `log(row)` takes a metrics.jsonl row."""

    def log(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flat(config).items()), 0)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "caikit"), name=name, dir=str(out),
                              config=_flat(config), reinit="finish_previous")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=row["step"])

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a file store beside the run: no server, no database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
            mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "caikit"))
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(config).items()})

    def log(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_numbers(row), step=row["step"])

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioTracker(Tracker):
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "caikit"), name=name, config=_flat(config),
                     embed=False)

    def log(self, row: dict[str, Any]) -> None:
        self.trackio.log(_numbers(row), step=row["step"])

    def close(self) -> None:
        self.trackio.finish()


KINDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker, "trackio": TrackioTracker}


def check_tracker(kind: str) -> None:
    """Stop before training (exit 2) when the tracker's package is not installed."""
    import importlib.util

    if kind in ("", "none"):
        return
    module = "tensorboard" if kind == "tensorboard" else kind
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--report-to {kind} needs its package: pip install 'caikit[{INSTALL[kind]}]'")


def open_tracker(kind: str, out: str | Path, config: dict[str, Any]) -> Tracker | None:
    """The tracker `--report-to` names, for the run writing to `out` (named after it); None for "none"."""
    if kind in ("", "none"):
        return None
    check_tracker(kind)
    out = Path(out)
    name = "-".join(out.resolve().parts[-2:])  # "my-run-dpo", "iter-2-dpo": the run's own directory and where it is
    return KINDS[kind](out, name, config)
