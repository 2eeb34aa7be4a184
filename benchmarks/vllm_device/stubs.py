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


class _StubMeta(type):
    """Stand-in classes: any attribute is another stand-in class, a call with one callable
    is a bare decorator, a call otherwise makes an instance, ``X[...]`` and ``X | None``
    are ``X``. Classes (not instances), so that pydantic accepts them in annotations."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{cls.__qualname__}.{name}")

    def __getitem__(cls, item):
        return cls

    def __or__(cls, other):
        return cls

    __ror__ = __or__

    def __call__(cls, *a, **k):
        if len(a) == 1 and not k and callable(a[0]) and not isinstance(a[0], _StubMeta):
            return a[0]  # used as a bare decorator
        return super().__call__()

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False

    def __get_pydantic_core_schema__(cls, source, handler):
        from pydantic_core import core_schema

        return core_schema.any_schema()


class _StubBase(metaclass=_StubMeta):
    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)()

    def __call__(self, *a, **k):
        return _stub_class("result")()


def _stub_class(name: str):
    return _StubMeta(name.rsplit(".", 1)[-1], (_StubBase,), {"__qualname__": name})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{self.__name__}.{name}")


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
