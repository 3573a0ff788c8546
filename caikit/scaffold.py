"""`caikit init`: a starter project — a constitution to edit, prompts, and a run config that uses them."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import yaml

from caikit.config import option
from caikit.errors import UserError


@dataclasses.dataclass
class InitConfig:
    out: str = option(".", help="directory to write the starter files into")
    force: bool = option(False, help="overwrite files that already exist")


def init(cfg: InitConfig) -> int:
    from caikit.constitution import resolve_constitution_path
    from caikit.prompts import bundled_prompts_path
    from caikit.commands.run import BUNDLED_CONFIGS

    out = Path(cfg.out)
    targets = {"constitution.yaml": resolve_constitution_path("hhh"), "prompts.jsonl": bundled_prompts_path()}
    existing = [name for name in [*targets, "caikit.yaml"] if (out / name).exists()]
    if existing and not cfg.force:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --force to overwrite", path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    for name, source in targets.items():
        shutil.copyfile(source, out / name)
    run = yaml.safe_load((BUNDLED_CONFIGS / "demo-cpu.yaml").read_text(encoding="utf-8"))
    run |= {"name": "my-run", "out": "outputs/my-run", "constitution": "constitution.yaml",
            "prompts": "prompts.jsonl"}
    (out / "caikit.yaml").write_text(
        "# Edit constitution.yaml and prompts.jsonl, then: caikit run caikit.yaml\n"
        + yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
    print(f"wrote {out / 'constitution.yaml'}, {out / 'prompts.jsonl'}, {out / 'caikit.yaml'}\n"
          f"next: caikit constitution validate {out / 'constitution.yaml'}\n"
          f"      caikit constitution test {out / 'constitution.yaml'} --judge local:smollm2 "
          f"--out {out / 'outputs' / 'constitution-test'}   (runs its cases: edit them with the principles)\n"
          f"      caikit run {out / 'caikit.yaml'}",
          file=sys.stderr)
    return 0
