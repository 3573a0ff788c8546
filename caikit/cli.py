"""`caikit <command>`: parse the command line, run one command, turn its errors into one line and an exit code.

The commands are listed once, in caikit.commands.COMMANDS, each with the module that holds its config
dataclass and entry point, imported only when that command runs (so `caikit --help` does not import torch).
Every command accepts `--config FILE.yaml`; flags typed on the command line win over the file.

Exit codes: 0 done; 1 failures above the allowed rate (--max-failure-rate); 2 bad input or options, a
provider that refuses the run (wrong key, unknown model), an output that cannot be written, a directory in
use by another process; 3 a quality gate stopped the run; 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys

from caikit.commands import COMMANDS, Command
from caikit.errors import MultiError, UserError


WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EDQUOT,
                errno.EEXIST, errno.EFBIG}


def _match(argv: list[str]) -> tuple[Command | None, list[str]]:
    """Longest command name that prefixes argv."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        for cmd in COMMANDS:
            if cmd.name == name:
                return cmd, argv[words:]
    return None, argv


def _usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: caikit <command> [options]   (caikit <command> --help for its options)", "", "commands:"]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a wrong value or an unknown flag is one line saying what would be right (exit 2),
    not a usage block with the one line that matters at its end."""

    def __init__(self, *args, option_fields: dict | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.option_fields = option_fields or {}

    def error(self, message: str):
        raise UserError(self.one_line(message))

    def one_line(self, message: str) -> str:
        from caikit.config import did_you_mean, range_text

        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        m = re.match(r"argument (\S+?)(?:/\S+)?: invalid choice: '?(.*?)'? \(choose from (.*)\)$", message)
        if m:
            choices = [c.strip(" '") for c in m.group(3).split(",")]
            return (f"{m.group(1)} must be one of {', '.join(choices)}, got '{m.group(2)}'"
                    + did_you_mean(m.group(2), choices))
        m = re.match(r"argument (\S+?)(?:/\S+)?: invalid (int|float) value: (.*)$", message)
        if m:
            action = next((a for a in self._actions if m.group(1) in a.option_strings), None)
            field = self.option_fields.get(action.dest) if action else None
            bounds = field.metadata.get("range") if field is not None else None
            kind = "a whole number" if m.group(2) == "int" else "a number"
            return f"{m.group(1)} must be {kind}" + (f" {range_text(bounds)}" if bounds else "") + f", got {m.group(3)}"
        m = re.match(r"unrecognized arguments: (.*)$", message)
        if m:
            words = m.group(1).split()
            unknown = [w for w in words if w.startswith("-")]
            if unknown:
                word = unknown[0].split("=", 1)[0]
                return f"unknown option {word}" + did_you_mean(word, flags, shown=str)
            return f"unexpected argument{'s' if len(words) > 1 else ''}: {' '.join(words)}"
        m = re.match(r"argument (\S+?)(?:/\S+)?: expected (?:one|at least one) argument", message)
        if m:
            return f"{m.group(1)} needs a value"
        return message


def build_parser(cmd: Command, cls: type) -> argparse.ArgumentParser:
    """The command's argument parser: what `--help` prints and what the generated reference page lists."""
    import dataclasses

    from caikit.config import add_dataclass_args

    parser = _Parser(prog=f"caikit {cmd.name}", description=cmd.help,
                     option_fields={f.name: f for f in dataclasses.fields(cls)})
    if "config_file" not in cmd.positional:
        parser.add_argument("--config", dest="_config_file", metavar="FILE", default=None,
                            help="YAML file with options (flags on the command line win)")
    add_dataclass_args(parser, cls, positional=cmd.positional)
    return parser


def _run(cmd: Command, rest: list[str]):
    from caikit.config import resolve

    if "-h" in rest or "--help" in rest:  # only the options are needed: torch & co. are bound but never loaded
        from caikit.lazy_imports import deferred_heavy_imports

        with deferred_heavy_imports():
            build_parser(cmd, getattr(importlib.import_module(cmd.module), cmd.config)).parse_args(rest)
    module = importlib.import_module(cmd.module)
    cls = getattr(module, cmd.config)
    parser = build_parser(cmd, cls)
    args = parser.parse_args(rest)
    config_file = vars(args).pop("_config_file", None)
    cfg = resolve(cls, args, config_file=config_file)
    lock = None
    if cmd.name.startswith("train "):  # a trainer's --out: no finished model overwritten unasked, one writer
        from caikit.train.loop import guard_output

        lock = guard_output(cfg, cmd.name)
    try:
        return getattr(module, cmd.func)(cfg)
    finally:
        if lock is not None:
            lock.release()


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning. With spinning, torch on a CPU shared with any
    # other busy process ran 5-8x slower here (SmolLM2 batch-16 generation: 8 vs 41 tok/s on 2 cores).
    # Must be set before torch is first imported; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # transformers', datasets' and the Hub client's own bars (shard loading, map, downloads) stay out of our
    # output: they interleave with caikit's progress and leave escape codes in logs. A user's own setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from caikit import __version__

        print(__version__)
        return 0
    cmd, rest = _match(argv)
    if cmd is None:
        print(f"caikit: unknown command '{' '.join(argv[:2])}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        result = _run(cmd, rest)
    except MultiError as e:
        for line in e.messages:
            print(line, file=sys.stderr)
        return e.exit_code
    except UserError as e:
        print(f"caikit {cmd.name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full or read-only disk, a path that is a file: one line, nothing half-written
        if e.errno is None:
            raise
        verb = "cannot write" if e.errno in WRITE_ERRORS else "cannot use"
        where = f" {e.filename}" if e.filename else ""
        print(f"caikit {cmd.name}: error: {verb}{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caikit {cmd.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if os.environ.get("CAIKIT_DEBUG"):
        print(f"result: {result!r}", file=sys.stderr)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
