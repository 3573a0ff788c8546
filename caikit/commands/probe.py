"""`caikit probe --base-url URL --model M`: what an OpenAI-compatible server supports, before a run relies on it.

Prints (or, with --json, writes as JSON) whether the server lists the model, honours `n`, returns
log-probs, follows a system message, how many requests it serves at once and how fast it answers (see
caikit/backends/probe.py). `caikit generate`, `judge` and `eval judge` take the same probe at their start
against any --base-url that is not a known cloud API, and keep it in the run directory (probe.json).
"""

from __future__ import annotations

import dataclasses
import json

from caikit.backends.probe import format_probe, probe_server
from caikit.backends.registry import BackendOptions, make_backend
from caikit.config import option
from caikit.errors import UserError


@dataclasses.dataclass
class ProbeConfig:
    base_url: str = option("", help="the server's OpenAI-compatible base URL, e.g. http://localhost:8080/v1")
    model: str = option("", help="the model name the server serves (llama.cpp accepts any; vLLM wants its own)")
    api_key_file: str = option("", help="file holding the API key (default: OPENAI_API_KEY; local servers take any)")
    timeout: float = option(60.0, above=0, high=86400, help="seconds before one probe request is abandoned")
    ramp: bool = option(True, help="measure how many requests the server serves at once by a short ramp of "
                                   "concurrent requests when it does not say so (llama.cpp's /props does)")
    json: bool = option(False, help="print the probe as JSON")

    def validate(self) -> None:
        if not self.base_url or not self.model:
            raise UserError("give --base-url URL and --model NAME (the server's model)")


def run_probe(cfg: ProbeConfig) -> int:
    backend = make_backend(BackendOptions(backend="openai", model=cfg.model, base_url=cfg.base_url,
                                          api_key_file=cfg.api_key_file, timeout=cfg.timeout))
    probe = probe_server(cfg.base_url, backend.model, backend.api_key_for_probe(), timeout=cfg.timeout, ramp=cfg.ramp)
    print(json.dumps(probe, indent=2) if cfg.json else format_probe(probe))
    return 0
