"""Deferred imports of the heavy libraries while `caikit <command> --help` is answered.

A command's options live in a dataclass beside its code, and that code imports torch, transformers or an SDK at the
top (as it should: the import is real work the command does). `--help` needs only the dataclass, so while it is
being answered the heavy top-level packages are imported lazily: the name is bound, and the library's own code runs
only if something touches it, which printing help does not. This turns `caikit train sft --help` from seconds
(importing torch) into a fraction of a second, without moving any config away from the code it configures. Only
the help path uses it: the process ends after printing, so no half-loaded module ever reaches a real run.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Iterator

HEAVY = frozenset({"torch", "transformers", "datasets", "accelerate", "peft", "safetensors", "openai", "anthropic",
                   "matplotlib", "numpy", "pyarrow", "tokenizers", "huggingface_hub", "scipy", "vllm"})


_ACTIVE: list = []  # the finder, while deferring


class _Deferred(types.ModuleType):
    """A package whose code has not run yet: the first attribute it lacks runs it (then it is a plain module).

    The stdlib's LazyLoader loads on *any* attribute, `__spec__` included, which a second `import torch` reads
    (Python 3.11): the import machinery's own attributes (set before this class is assigned) are plain here."""

    def __getattr__(self, name: str):
        if _ACTIVE and not name.startswith("__"):  # `from torch import nn`: a submodule, itself deferred
            spec = importlib.util.find_spec(f"{self.__name__}.{name}")
            if spec is not None:
                return importlib.import_module(f"{self.__name__}.{name}")
        _load(self)
        return getattr(self, name)


def _load(module: types.ModuleType) -> None:
    if type(module) is not _Deferred:
        return
    module.__class__ = types.ModuleType
    loader = module.__dict__.pop("_caikit_loader")
    module.__spec__.loader = module.__loader__ = loader
    loader.exec_module(module)


class _DeferredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["_caikit_loader"] = self.loader
        module.__class__ = _Deferred


class _DeferringFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top not in HEAVY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _DeferredLoader(spec.loader)
        return spec


@contextlib.contextmanager
def deferred_heavy_imports() -> Iterator[None]:
    """Within the block, `import torch` (and the other HEAVY packages) binds a module that loads on first use."""
    finder = _DeferringFinder()
    sys.meta_path.insert(0, finder)
    _ACTIVE.append(finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _ACTIVE.remove(finder)


def loaded(name: str) -> bool:
    """Whether a package's own code has run (a lazily bound module that nothing touched does not count)."""
    module = sys.modules.get(name)
    return module is not None and type(module) is not _Deferred
