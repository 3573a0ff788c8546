"""Saving finished models (loadable by `from_pretrained`) and resumable training checkpoints.

A checkpoint lives in `out_dir/checkpoint/`: model.safetensors (the trainable weights only: all of them
in full fine-tuning, just the adapters with LoRA, since frozen weights come back from --model),
optimizer.pt and scheduler.pt (tensors and plain containers only, so they load with
`torch.load(weights_only=True)`), rng.pt, and trainer_state.json `{"step": int, "extra": {...}}`.
It is written to a temporary folder and swapped in, so a crash mid-save leaves the previous one; a failed save
(a full disk) removes the temporary folder and says which file it could not write, in one line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from caikit.config import save_config

CHECKPOINT_DIR = "checkpoint"


def unwrap(model):
    """The bare model under accelerate / DDP wrappers (a peft model stays a peft model)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def is_peft_model(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


@contextlib.contextmanager
def writing_model_files(path: str | Path):
    """Model files written inside: a failed write becomes one line naming `path` (exit 2). safetensors raises
    its own SafetensorError and torch.save a RuntimeError on a full disk, neither an OSError with a file name."""
    from caikit.errors import UserError
    from caikit.store import naming

    try:
        with naming(path):
            yield
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 -- SafetensorError is no subclass of anything more specific
        if not (isinstance(e, RuntimeError) or type(e).__name__ == "SafetensorError"):
            raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        where = Path(path)
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        raise UserError(f"cannot write {path}: {reason} ({free / 2**20:.0f} MiB free on its disk)") from None


def save_pretrained(model, tokenizer, cfg: Any, out_dir: str | Path, state_dict: dict | None = None):
    """safetensors weights + tokenizer + resolved config.yaml in `out_dir`; returns the saved model.

    LoRA adapters are merged into the base weights first (in place: call this at the end of training),
    so `AutoModelFor*.from_pretrained(out_dir)` loads the trained model without peft.
    state_dict: the gathered full weights of a sharded (ZeRO-3 / FSDP) run; None for plain runs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if is_peft_model(model) and state_dict is None:
        model = model.merge_and_unload()
    with writing_model_files(out_dir):
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    if cfg is not None:
        save_config(cfg, out_dir / "config.yaml")
    return model


def save_checkpoint(out_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict | None = None) -> Path:
    """Everything needed to continue training from `step` (optimizer steps done), in out_dir/checkpoint/."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    final = out_dir / CHECKPOINT_DIR
    tmp = out_dir / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {name: p.detach().contiguous() for name, p in unwrap(model).named_parameters() if p.requires_grad}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = json.dumps({"step": int(step), "extra": extra or {}}, indent=1)
    writes = [("model.safetensors", lambda f: save_file(trainable, str(f))),  # named_parameters lists tied weights once
              ("optimizer.pt", lambda f: torch.save(optimizer.state_dict(), f)),
              ("scheduler.pt", None if scheduler is None else lambda f: torch.save(scheduler.state_dict(), f)),
              ("rng.pt", lambda f: torch.save(rng, f)),
              ("trainer_state.json", lambda f: f.write_text(state, encoding="utf-8"))]
    try:
        for name, write in writes:
            if write is not None:
                with writing_model_files(final / name):  # named as where it goes: the temporary is removed
                    write(tmp / name)
    except BaseException:  # a full disk: no stray checkpoint.tmp/, the previous checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: str | Path, model, optimizer, scheduler) -> tuple[int, dict] | None:
    """Restore weights, optimizer, scheduler and RNG from out_dir/checkpoint/; None when there is none."""
    from safetensors.torch import load_file

    from caikit.errors import UserError

    ckpt = Path(out_dir) / CHECKPOINT_DIR
    state_file = ckpt / "trainer_state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text(encoding="utf-8"))
    params = dict(unwrap(model).named_parameters())
    saved = load_file(str(ckpt / "model.safetensors"))
    unknown = [k for k in saved if k not in params or params[k].shape != saved[k].shape]
    missing = [k for k, p in params.items() if p.requires_grad and k not in saved]
    if unknown or missing:
        raise UserError(f"checkpoint does not match this model ({len(unknown)} unexpected, {len(missing)} missing "
                        f"weights, e.g. {(unknown or missing)[0]}): same --model and --lora as the first run?",
                        path=str(ckpt))
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    if scheduler is not None and (ckpt / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    if (ckpt / "rng.pt").exists():
        rng = torch.load(ckpt / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"]), dict(state.get("extra") or {})
