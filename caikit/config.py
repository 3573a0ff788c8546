"""Typed configs: one dataclass per command, documented per field; YAML file + CLI overrides.

Each field's help text lives in `field(metadata={"help": ...})`; `add_dataclass_args` turns the
dataclass into argparse flags (`kl_coef` -> `--kl-coef`), and `resolve` merges, in order of
precedence: CLI flags the user actually typed > YAML config file > dataclass defaults.
The resolved config is saved beside every output with `save_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from caikit.errors import UserError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", **kw) -> Any:  # noqa: A002
    """A dataclass field with its `--help` text declared beside it."""
    meta = {"help": help, **kw.pop("metadata", {})}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field. Defaults are SUPPRESS so we can tell typed from defaulted."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False and f.name not in positional:
            continue
        tp = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if default not in (None, "", [], {}):
            help_text = f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.name in positional:
            if typing.get_origin(tp) is list:  # one or more values: `caikit merge DIR DIR ...`
                (inner,) = typing.get_args(tp) or (str,)
                parser.add_argument(f.name, help=help_text, type=inner, nargs="+", default=argparse.SUPPRESS)
                continue
            parser.add_argument(f.name, help=help_text, type=tp if tp in (int, float) else str,
                                nargs="?" if default is not None else None, default=argparse.SUPPRESS)
            continue
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:  # `--data a b` and `--data a --data b` alike give [a, b]
            (inner,) = typing.get_args(tp) or (str,)
            parser.add_argument(_flag(f.name), nargs="+", type=inner, action="extend", **kwargs)
        elif tp in (int, float, str):
            parser.add_argument(_flag(f.name), type=tp, **kwargs)
        else:
            parser.add_argument(_flag(f.name), type=str, **kwargs)


def load_yaml(path: str | Path) -> dict:
    """Load a YAML mapping with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read config: {e.strerror}", path=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML recurses per nesting level
        raise UserError("invalid YAML: nested too deeply", path=str(path), line=1) from None
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # the safe constructors' own errors
        raise UserError(f"invalid YAML: a value its tag (!!int, !!timestamp, ...) does not fit: {e}"[:200],
                        path=str(path)) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        msg = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"invalid YAML: {msg}", path=str(path), line=(line + 1) if line is not None else 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("expected a mapping of option: value", path=str(path), line=1)
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise UserError(f"option names must be text, got {_shown(odd[0])}", path=str(path))
    return data


def _shown(value: Any) -> str:
    """A value for a one-line error message: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(key: str, value: Any, tp: Any, field: dataclasses.Field, source: str) -> Any:
    """`value` as the field's declared type (str, int, float, bool, list[str]), or a UserError.

    YAML gives numbers where text was meant (`model: 4`) and text where numbers were (`lr: "1e-5"`):
    those convert; anything else of the wrong type (a list for a path, "no" for a flag, null for a
    number) is refused here, so no command ever sees it."""
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(tp, "a list of names")

    def wrong() -> UserError:
        return UserError(f"option '{key}' must be {kind}, got {_shown(value)}", path=source)

    if value is None:
        if field.default is None:  # declared "unset" (positional run_dir, ...)
            return None
        raise wrong()
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong()
        try:
            number = float(value)  # "1e-5" and 1.0e+3 alike
            if tp is int:
                exact = int(value) if isinstance(value, int) else None  # no float detour for big integers
                if exact is None and not number.is_integer():
                    raise ValueError
                number = exact if exact is not None else int(number)
        except (ValueError, OverflowError):  # "abc", 2.5 or .inf for an integer, 10**400
            raise wrong() from None
        return number
    if typing.get_origin(tp) is list:
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, list) or any(isinstance(v, (bool, list, dict)) or v is None for v in items):
            raise wrong()
        return [str(v) for v in items]
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise wrong()
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, *, source: str = "config") -> T:
    """Build `cls` from a plain dict, rejecting unknown keys, values of the wrong type and values
    outside a field's `choices`, and coercing numbers given as text (and the reverse)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise UserError(f"unknown option {_shown(key)} (known: {', '.join(sorted(fields))})", path=source)
        value = _coerce(str(key), value, _base_type(hints[name]), fields[name], source)
        choices = fields[name].metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"option '{key}' must be one of {', '.join(map(str, choices))}, got {_shown(value)}",
                            path=source)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"bad options: {e}", path=source) from None


def resolve(cls: type[T], args: argparse.Namespace | dict, *, config_file: str | None = None) -> T:
    """Defaults < YAML file < CLI flags actually given."""
    data: dict = load_yaml(config_file) if config_file else {}
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(cls)}
    data.update({k: v for k, v in given.items() if k in names})
    cfg = from_dict(cls, data, source=config_file or "command line")
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML. It holds no secrets: keys come from the environment or a key
    file (whose path, not content, is saved), and `user:password@` is dropped from any *base_url."""
    from caikit.backends.limits import public_url

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: (public_url(v) if k.endswith("base_url") and isinstance(v, str) and v else v)
              for k, v in to_dict(cfg).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)


@dataclasses.dataclass
class BackendOptions:
    """Which model answers, and how hard we may push its API. Shared by generate, judge and eval."""

    backend: str = option("local", help="model provider: openai | anthropic | local",
                          metadata={"choices": ["openai", "anthropic", "local"]})
    model: str = option("", help="model name (default per backend: gpt-4o-mini, claude-haiku-4-5, smollm2)")
    base_url: str = option("", help="API base URL for OpenAI-compatible servers (vLLM, llama.cpp, Ollama) or an Anthropic proxy")
    concurrency: int = option(16, help="max requests in flight (API) / max batch size (local)")
    rpm: float = option(0.0, help="client-side requests-per-minute limit (0: none)")
    tpm: float = option(0.0, help="client-side tokens-per-minute limit, estimated then corrected by usage (0: none)")
    timeout: float = option(60.0, help="seconds before a request is abandoned and retried")
    max_retries: int = option(6, help="attempts per request (429/5xx/timeouts/malformed bodies) before a failure row")
    device: str = option("", help="local backend device: cpu | cuda | cuda:1 (default: cuda if available)")
    prices: str = option("", help="YAML/JSON price table overriding built-in USD per 1M tokens {model: {input, output}}")
    api_key_file: str = option("", help="file holding the API key (a bare key, or NAME=value lines as in .env); "
                                        "default: the OPENAI_API_KEY / ANTHROPIC_API_KEY environment variable")
    batch_api: bool = option(False, help="send requests through the provider's batch API (OpenAI Batch, Anthropic "
                                         "Message Batches): half price, results within 24 h; one batch per round")
    batch_poll_interval: float = option(30.0, help="seconds between polls of a running batch job (--batch-api)")
    max_cost: float = option(0.0, help="USD this run may spend (0: no limit): above the estimate it asks first, "
                                       "and it stops before a request that could exceed it; it counts all the run "
                                       "directory has spent (usage.json): rerun with a higher --max-cost to go on")
    yes: bool = option(False, help="don't ask for confirmation when the estimated cost exceeds --max-cost")

    def make_backend(self):
        from caikit.backends.factory import make_backend

        return make_backend(self.backend, self.model or None, base_url=self.base_url or None,
                            concurrency=self.concurrency, rpm=self.rpm or None, tpm=self.tpm or None,
                            timeout=self.timeout, max_retries=self.max_retries, batch_size=self.concurrency,
                            device=self.device or None, api_key_file=self.api_key_file or None)

    def validate(self) -> None:
        if self.concurrency < 1:
            raise UserError("--concurrency must be >= 1")
        if self.max_retries < 1:
            raise UserError("--max-retries must be >= 1")
        if self.max_cost < 0:
            raise UserError("--max-cost must be >= 0 (USD; 0: no limit)")
        if self.batch_poll_interval <= 0:
            raise UserError("--batch-poll-interval must be > 0 seconds")
        if self.batch_api and self.backend == "local":
            raise UserError("--batch-api needs --backend openai or anthropic (a local model batches by itself)")
