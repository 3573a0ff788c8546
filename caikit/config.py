"""Typed configs: one dataclass per command, documented per field; YAML file + CLI overrides.

Each field's help text lives in `field(metadata={"help": ...})`; `add_dataclass_args` turns the
dataclass into argparse flags (`kl_coef` -> `--kl-coef`), and `resolve` merges, in order of
precedence: CLI flags the user actually typed > YAML config file > dataclass defaults.
Every numeric option declares its valid range beside its default (`option(16, low=1)`); `from_dict`
checks it once, for flags and YAML alike (NaN, infinities and integers beyond 2**53 are refused
everywhere), and `options_table` renders the ranges for the README, so they are written once.
The resolved config is saved beside every output with `save_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from caikit.errors import UserError
from caikit.secrets import public_url
from caikit.store import write_text_atomic

T = TypeVar("T")


ALIAS = "_alias_"  # argparse dest prefix of a former option name
MAX_INT = 2**53  # larger integers are refused for every option: no option needs them, and C code overflows


def option(default: Any = dataclasses.MISSING, help: str = "", *, low: float | None = None,  # noqa: A002
           high: float | None = None, above: float | None = None, below: float | None = None,
           aliases: tuple[str, ...] = (), **kw) -> Any:
    """A dataclass field with its `--help` text and, for numbers, its valid range declared beside it:
    `low`/`high` are inclusive bounds, `above`/`below` exclusive ones. `aliases`: former names, accepted with a
    warning for one release (flags and YAML alike)."""
    meta = {"help": help, **kw.pop("metadata", {})}
    if aliases:
        meta["aliases"] = tuple(aliases)
    bounds = {k: v for k, v in (("low", low), ("high", high), ("above", above), ("below", below)) if v is not None}
    if bounds:
        meta["range"] = bounds
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def did_you_mean(word: str, names, *, shown=repr) -> str:
    """' (did you mean 'max_tokens'?)' for the nearest of `names`, or '' when none is near."""
    import difflib

    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return f" (did you mean {shown(close[0])}?)" if close else ""


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
        for alias in f.metadata.get("aliases", ()):  # the former name: hidden, mapped (and warned about) by resolve
            parser.add_argument(_flag(alias), type=tp if tp in (int, float, str) else str, dest=ALIAS + alias,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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


def _named(key: str, source: str) -> str:
    """An option as the user wrote it: `--max-tokens` on the command line, `option 'max_tokens'` in a file."""
    return f"--{key.replace('_', '-')}" if source == "command line" else f"option '{key}'"


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
        return UserError(f"{_named(key, source)} must be {kind}, got {_shown(value)}", path=_file(source))

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


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 10_000 else f"{x:g}"


def range_text(bounds: dict[str, float]) -> str:
    """'>= 1', '> 0', '0 to 1', '>= 0 and < 1': a declared range in words."""
    low = f">= {_number(bounds['low'])}" if "low" in bounds else (
        f"> {_number(bounds['above'])}" if "above" in bounds else "")
    high = f"<= {_number(bounds['high'])}" if "high" in bounds else (
        f"< {_number(bounds['below'])}" if "below" in bounds else "")
    if "low" in bounds and "high" in bounds:
        return f"{_number(bounds['low'])} to {_number(bounds['high'])}"
    return " and ".join(part for part in (low, high) if part) or "any"


def _file(source: str) -> str | None:
    return None if source == "command line" else source


def check_range(key: str, value: Any, field: dataclasses.Field, source: str) -> None:
    """Refuse NaN, infinities, integers beyond MAX_INT and values outside the field's declared range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{_named(key, source)} must be a finite number, got {value}", path=_file(source))
    if abs(value) > MAX_INT:
        raise UserError(f"{_named(key, source)} is out of range: {_shown(value)}", path=_file(source))
    bounds = field.metadata.get("range")
    if not bounds:
        return
    ok = (value >= bounds.get("low", -math.inf) and value <= bounds.get("high", math.inf)
          and value > bounds.get("above", -math.inf) and value < bounds.get("below", math.inf))
    if not ok:
        raise UserError(f"{_named(key, source)} must be {range_text(bounds)}, got {_shown(value)}", path=_file(source))


def from_dict(cls: type[T], data: dict, *, source: str = "config", flags: frozenset[str] = frozenset()) -> T:
    """Build `cls` from a plain dict, rejecting unknown keys, values of the wrong type and values
    outside a field's `choices`, and coercing numbers given as text (and the reverse). Keys in `flags` came
    from the command line: their errors name the flag, the others name `source` (the config file)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    renamed = {alias: f.name for f in fields.values() for alias in f.metadata.get("aliases", ())}
    file_source = source
    for key, value in data.items():
        source = "command line" if key in flags else file_source
        name = str(key).replace("-", "_").removeprefix(ALIAS)
        if name in renamed:
            print(f"caikit: warning: {source}: option '{name}' is now '{renamed[name]}'; the old name works until "
                  "the next release", file=sys.stderr)
            key = name = renamed[name]
        if name not in fields:
            hint = did_you_mean(name, fields) or f" (known: {', '.join(sorted(fields))})"
            raise UserError(f"unknown option {_shown(key)}{hint}", path=source)
        value = _coerce(str(key), value, _base_type(hints[name]), fields[name], source)
        check_range(str(key), value, fields[name], source)
        choices = fields[name].metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{_named(str(key), source)} must be one of {', '.join(map(str, choices))}, got "
                            f"{_shown(value)}", path=_file(source))
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"bad options: {e}", path=file_source) from None


def resolve(cls: type[T], args: argparse.Namespace | dict, *, config_file: str | None = None) -> T:
    """Defaults < YAML file < CLI flags actually given."""
    data: dict = load_yaml(config_file) if config_file else {}
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in given.items() if k in names or k.startswith(ALIAS)}
    data.update(flags)
    cfg = from_dict(cls, data, source=config_file or "command line", flags=frozenset(flags))
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML. It holds no secrets: keys come from the environment or a key
    file (whose path, not content, is saved), and `user:password@` and key-like query parameters are
    dropped from any *base_url (also inside nested mappings, such as a run file's stages)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = scrubbed(cfg if isinstance(cfg, dict) else to_dict(cfg))
    write_text_atomic(path, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))


def scrubbed(values: Any) -> Any:
    """`values` with every *base_url (and a judge / policy spec's @URL part) made public, recursively."""
    if isinstance(values, dict):
        return {k: (_public_spec(v) if isinstance(k, str) and k.endswith(("base_url", "judge", "check_judge"))
                    and isinstance(v, str) and v else scrubbed(v)) for k, v in values.items()}
    if isinstance(values, list):
        return [scrubbed(v) for v in values]
    return values


def _public_spec(value: str) -> str:
    """A URL, or a `provider:model@URL` spec, without credentials."""
    if "://" not in value:
        return value
    at = value.find("@")
    if 0 <= at < value.index("://"):  # provider:model@URL
        return value[: at + 1] + (public_url(value[at + 1:]) or "")
    return public_url(value) or value


def options_table(cls: type, *, skip: tuple[type, ...] = ()) -> str:
    """A Markdown table of `cls`'s numeric options -- flag, default, valid range -- leaving out the fields of
    the classes in `skip` (shared option groups shown in a table of their own). The README's option tables
    are generated from here (scripts/options_doc.py), so a range is written once, where it is declared."""
    hints = typing.get_type_hints(cls)
    shared = {f.name for group in skip for f in dataclasses.fields(group)}
    rows = []
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        valid = f.metadata.get("valid")  # a text option with a range of its own (--concurrency: auto or 1-4096)
        if f.name in shared or (tp not in (int, float) and not valid) or f.metadata.get("cli") is False:
            continue
        bounds = f.metadata.get("range")
        valid = valid or (range_text(bounds) if bounds else "any finite number")
        rows.append(f"| `{_flag(f.name)}` | {f.default} | {valid} |")
    if not rows:
        return ""
    return "| option | default | valid |\n|---|---|---|\n" + "\n".join(rows)
