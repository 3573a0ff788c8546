"""Randomly initialised causal LMs with the SmolLM2 tokenizer, for benches on a machine without weights or network.

    random_model_dir("0.48b", out_dir)       # a preset shape (SHAPES)
    random_model_dir("config.json", out_dir)  # any transformers config file (or a directory holding one)
    random_model_dir("layers=4,hidden=256", out_dir)  # a Llama shape by hand (keys of LLAMA_KEYS)

The tokenizer comes from `tokenizer_dir()`: $CAIKIT_TOKENIZER, else the SmolLM2 tokenizer files bundled in
caikit/data/ (when the package ships them), else the de-quantised embedded SmolLM2 in the cache. Weights are
drawn with the model's own initialisation under a fixed seed and saved as safetensors, so every bench loads
the model the way users do.
"""

from __future__ import annotations

import os
from pathlib import Path

from caikit.errors import UserError

# name -> Llama shape (hidden, layers, heads, kv_heads, intermediate); vocab and tying from the tokenizer
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 2, 4, 2, 128),  # CPU smoke runs
    "135m": (576, 30, 9, 3, 1536),  # SmolLM2-135M's shape
    "360m": (960, 32, 15, 5, 2560),  # SmolLM2-360M's shape
    "0.48b": (1152, 24, 18, 6, 4096),  # the bench model: 482M parameters with the 49,152-token vocabulary
    "1.7b": (2048, 24, 32, 32, 8192),  # SmolLM2-1.7B's shape
}
LLAMA_KEYS = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
              "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size",
              "context": "max_position_embeddings"}
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "smollm2_tokenizer"


def tokenizer_dir() -> str:
    """Where the SmolLM2 tokenizer files are (see the module doc)."""
    if os.environ.get("CAIKIT_TOKENIZER"):
        return os.environ["CAIKIT_TOKENIZER"]
    if (BUNDLED_TOKENIZER / "tokenizer.json").exists():
        return str(BUNDLED_TOKENIZER)
    from caikit.models import resolve_model_path

    return resolve_model_path("smollm2")


def model_config(spec: str, tokenizer):
    """A transformers config from a preset name, a config file / directory, or `key=value,...` (Llama)."""
    from transformers import AutoConfig, LlamaConfig

    path = Path(spec).expanduser()
    if path.exists():  # a directory holding config.json, or the file itself
        return AutoConfig.from_pretrained(str(path))
    shape = dict(zip(("hidden", "layers", "heads", "kv_heads", "intermediate"), SHAPES.get(spec.lower(), ())))
    if not shape:
        try:
            shape = {k.strip(): int(v) for k, v in (part.split("=") for part in spec.split(","))}
        except ValueError:
            raise UserError(f"--random-init: '{spec}' is not a preset ({', '.join(SHAPES)}), a config file or "
                            f"key=value pairs ({', '.join(LLAMA_KEYS)})") from None
        unknown = set(shape) - set(LLAMA_KEYS)
        if unknown:
            raise UserError(f"--random-init: unknown key '{sorted(unknown)[0]}' (use {', '.join(LLAMA_KEYS)})")
        shape.setdefault("hidden", 256)
        shape.setdefault("layers", 4)
        shape.setdefault("heads", max(1, shape["hidden"] // 64))
        shape.setdefault("kv_heads", shape["heads"])
        shape.setdefault("intermediate", 4 * shape["hidden"])
    shape.setdefault("context", 2048)
    return LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **{LLAMA_KEYS[k]: v for k, v in shape.items()})


def random_model_dir(spec: str, out: str | Path, seed: int = 0) -> str:
    """Build, save (safetensors + tokenizer) and return the directory of a random-init model of `spec`."""
    import torch
    from transformers import AutoModelForCausalLM

    from caikit.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir(), padding_side="left")
    config = model_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def parameter_count(model_dir: str) -> int:
    """Weights in a saved model directory (tied ones once)."""
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                count = 1
                for size in f.get_slice(key).get_shape():
                    count *= size
                total += count
    return total
