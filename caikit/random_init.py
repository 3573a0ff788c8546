"""Models with random weights built from a config and the bundled SmolLM2 tokenizer (caikit/data/tokenizer/).

For benches on a machine with no weights and no network (`scripts/bench_train.py --random-init SPEC`): the
model is written as an ordinary model directory, so trainers, TRL and `from_pretrained` load it unchanged.

SPEC is a config (a config.json file or a directory holding one), a shape name from SHAPES, or either
followed by `,field=value` overrides of the Llama config: `0.48b`, `135m,num_hidden_layers=4`,
`tiny,hidden_size=128`, `layers=4,hidden=256` (short names in SHORT_FIELDS). A bare `field=value,...` list
starts from `tiny`. Every bench (generate, PPO, train, online) builds its model here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from caikit.errors import UserError

TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "tokenizer"
SHAPES: dict[str, dict[str, int]] = {
    # CPU smoke tests: seconds per step
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    # the shapes of SmolLM2-135M / -360M / -1.7B
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32),
    # ~0.48-0.49B parameters with the 49k vocabulary: the size issue #16 measures at (wide-shallow and narrow-deep)
    "0.48b": dict(hidden_size=1152, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=18,
                  num_key_value_heads=6),
    "llama-0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8),
}
SHAPES["smollm2-135m"], SHAPES["smollm2-360m"] = SHAPES["135m"], SHAPES["360m"]
SHORT_FIELDS = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
                "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size",
                "context": "max_position_embeddings"}


def bundled_tokenizer(padding_side: str = "right"):
    """The SmolLM2 tokenizer shipped with caikit, pad token set as `caikit.models.load_tokenizer` sets it."""
    from transformers import AutoTokenizer

    from caikit.models import with_pad_token

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tokenizer.padding_side = padding_side
    return with_pad_token(tokenizer)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def model_config(spec: str):
    """The transformers config SPEC names (see the module docstring), sized to the bundled tokenizer."""
    from transformers import AutoConfig, LlamaConfig

    base, *rest = [part.strip() for part in spec.split(",") if part.strip()] or [""]
    if "=" in base:
        base, rest = "tiny", [base, *rest]
    overrides = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"--random-init: '{part}' is not field=value (in '{spec}')")
        try:
            overrides[SHORT_FIELDS.get(key.strip(), key.strip())] = _number(value.strip())
        except ValueError:
            raise UserError(f"--random-init: {key.strip()} must be a number, got '{value.strip()}'") from None
    tokenizer = bundled_tokenizer()
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if base in SHAPES:
        config = LlamaConfig(**SHAPES[base], **ids, max_position_embeddings=8192, tie_word_embeddings=True,
                             rope_theta=100000.0)
    elif Path(base).expanduser().exists():
        config = AutoConfig.from_pretrained(str(Path(base).expanduser()))
        config.vocab_size = max(int(getattr(config, "vocab_size", 0) or 0), len(tokenizer))
    else:
        raise UserError(f"--random-init: '{base}' is neither a config file / directory nor a shape "
                        f"({', '.join(SHAPES)})")
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(f"--random-init: {type(config).__name__} has no field '{key}'")
        setattr(config, key, value)
    return config


def random_init_model(spec: str, out_dir: str | Path, seed: int = 0) -> str:
    """Write a randomly initialised causal LM for SPEC (fp32 safetensors + the bundled tokenizer) into
    out_dir, reusing one already written there for the same SPEC and seed; returns the directory."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    stamp = {"random_init": spec, "seed": seed}
    marker = out / "random_init.json"
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) == stamp:
        return str(out)
    config = model_config(spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # written aside, then swapped in whole
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    bundled_tokenizer().save_pretrained(tmp)
    (tmp / marker.name).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
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
