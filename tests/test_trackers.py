"""`--report-to`: the rows of metrics.jsonl reach each experiment tracker under the same names and steps, read back
from the tracker's own offline store (TensorBoard event files, W&B offline run, MLflow file store, Trackio's local
database). A tracker whose package is not installed is skipped, saying so."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"loss": 0.9, "lr": 1e-5}, {"loss": 0.7, "lr": 2e-5}, {"loss": 0.6, "lr": 2e-5, "eval_loss": 0.65}]

LOG = """
import json, sys
from caikit.metrics import MetricsLogger
from caikit.trackers import open_tracker
kind, out = sys.argv[1], sys.argv[2]
logger = MetricsLogger(out, tracker=open_tracker(kind, out, {"lr": 1e-5, "model": "tiny", "data": ["a"]}))
for step, row in enumerate(json.loads(sys.argv[3]), start=1):
    logger.log(step, **row, note="text is not sent")
logger.close()
"""

READ = {
    "tensorboard": """
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(out + "/tensorboard"); acc.Reload()
got = {k: [[e.step, e.value] for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}
""",
    "wandb": """
import glob, struct
from wandb.proto import wandb_internal_pb2
(path,) = glob.glob(out + "/wandb/offline-run-*/run-*.wandb")
data, pos, block, records, part = open(path, "rb").read(), 7, 32768, [], b""
while pos + 7 <= len(data):  # W&B's record log: 32 KiB blocks of (crc, length, type) chunks after a 7-byte header
    if block - pos % block < 7:
        pos += block - pos % block
        continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind in (1, 4):  # a whole record, or the last chunk of one
        records.append(part)
        part = b""
got = {}
for raw in records:
    record = wandb_internal_pb2.Record()
    record.ParseFromString(raw)
    if record.WhichOneof("record_type") == "history":
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
        for k in ("loss", "lr", "eval_loss", "note"):
            if k in items:
                got.setdefault(k, []).append([items["_step"], items[k]])
""",
    "mlflow": """
from mlflow.tracking import MlflowClient
from pathlib import Path
client = MlflowClient(Path(out, "mlruns").resolve().as_uri())
(run,) = client.search_runs([client.get_experiment_by_name("caikit").experiment_id])
got = {k: [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
got["_params"] = run.data.params
""",
    "trackio": """
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("caikit", "-".join(Path(out).resolve().parts[-2:]))
got = {}
for row in logs:
    for k, v in row.items():
        if k in ("loss", "lr", "eval_loss"):
            got.setdefault(k, []).append([row["step"], v])
from pathlib import Path as _P
""",
}


def run_tracker(kind: str, tmp_path: Path) -> dict:
    module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}[kind]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'caikit[{kind}]'); its --report-to is untested here")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": "", "HF_HUB_OFFLINE": "1",
           "WANDB_DISABLE_GIT": "true", "HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI")
    logged = subprocess.run([sys.executable, "-c", LOG, kind, str(out), json.dumps(ROWS)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    read = f"import json, sys\nfrom pathlib import Path\nout = sys.argv[1]\n{READ[kind]}\nprint(json.dumps(got))"
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the reader's own opt-in (the writer sets it for the store it makes)
    done = subprocess.run([sys.executable, "-c", read, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tensorboard_event_files_hold_every_row(tmp_path):
    got = run_tracker("tensorboard", tmp_path)
    assert got["loss"] == [[1, pytest.approx(0.9)], [2, pytest.approx(0.7)], [3, pytest.approx(0.6)]]
    assert got["eval_loss"] == [[3, pytest.approx(0.65)]] and "note" not in got and "step" not in got


def test_wandb_offline_run_holds_every_row(tmp_path):
    got = run_tracker("wandb", tmp_path)  # read back from the offline run file `wandb sync` would upload
    assert got["loss"] == [[1, 0.9], [2, 0.7], [3, 0.6]] and got["lr"] == [[1, 1e-5], [2, 2e-5], [3, 2e-5]]
    assert got["eval_loss"] == [[3, 0.65]] and "note" not in got


def test_mlflow_file_store_holds_every_row_and_the_config(tmp_path):
    got = run_tracker("mlflow", tmp_path)
    assert sorted(got["loss"]) == [[1, 0.9], [2, 0.7], [3, 0.6]] and got["eval_loss"] == [[3, 0.65]]
    assert got["_params"]["model"] == "tiny" and "data" not in got["_params"]  # scalars only


def test_trackio_local_store_holds_every_row(tmp_path):
    got = run_tracker("trackio", tmp_path)
    assert got["loss"] == [[1, 0.9], [2, 0.7], [3, 0.6]] and got["eval_loss"] == [[3, 0.65]]


def test_a_missing_tracker_stops_before_training(monkeypatch):
    import importlib.util as util

    from caikit.errors import UserError
    from caikit.trackers import check_tracker

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"--report-to wandb needs its package: pip install 'caikit\[wandb\]'"):
        check_tracker("wandb")
    check_tracker("none")


@pytest.mark.e2e
def test_a_trainer_sends_its_metrics_rows_to_tensorboard(tmp_path, tiny_model_dir):
    """`caikit train sft --report-to tensorboard`: every numeric metric of metrics.jsonl, at its step."""
    pytest.importorskip("tensorboard", reason="pip install 'caikit[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from caikit.cli import main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer number {i}."}) + "\n"
                            for i in range(8)))
    out = tmp_path / "sft"
    assert main(["train", "sft", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "2", "--eval-fraction", "0", "--report-to", "tensorboard", "--no-packing"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    losses = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    assert len(losses) == 3
    assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in acc.Scalars("loss")] == losses
    assert "lr" in acc.Tags()["scalars"]
