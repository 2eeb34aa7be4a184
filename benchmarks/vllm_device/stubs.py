"""Import stubs for packages vLLM 0.26 imports on its offline ``LLM`` path but never calls
there (structured-output engines, the API server's web stack). The device machine has no
network, so they are not installed; ``GSA_VLLM_STUBS`` (comma list) names them. A real
package of that name, when importable, wins. Loaded by ``sitecustomize.py`` in every
Python process (vLLM inspects models in a subprocess).
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

NAMES = {n for n in os.environ.get("GSA_VLLM_STUBS", "").split(",") if n}


class _Anything:
    """Any attribute, call, subscript or base class: another stand-in."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return a[0] if (len(a) == 1 and callable(a[0]) and not k) else _Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __getitem__(self, item):
        return _Anything()

    def __mro_entries__(self, bases):
        return (_Base,)

    def __iter__(self):
        return iter(())

    def __bool__(self):
        return False


class _Base:
    def __init__(self, *a, **k):
        pass

    def __init_subclass__(cls, **k):
        pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top not in NAMES:
            return None
        for finder in sys.meta_path:  # a real package wins
            if finder is self:
                continue
            try:
                if finder.find_spec(fullname, path, target) is not None:
                    return None
            except Exception:
                continue
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


if NAMES and not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
