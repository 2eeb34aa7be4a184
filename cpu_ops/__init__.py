"""gsa-ops C++ CPU backend (``cpu``): SIMD popcount selection on the host.

``register()`` adds backend ``cpu`` (device type ``"cpu"``, priority 10) to
:mod:`gsa.dispatch`. It is cheap and never raises: the compiled extension
``cpu_ops._gsa_cpu`` is imported only by the probe, which reports why it is
missing (not built, and the build error saved at install time) in ``gsa info``.
``paged_decode_attention`` is not implemented here: dispatch falls back to the
reference for it.

Code paths (``portable``, ``avx2``, ``avx512``) are chosen at run time; force
one with ``GSA_CPU_PATH=<name>`` or :func:`use_path`; threads with
``GSA_CPU_THREADS=<n>`` or :func:`set_num_threads` (default: torch's
``get_num_threads()`` at first use). See cpu_ops/README.md.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, List, Tuple

__all__ = [
    "register", "probe", "available", "extension", "supported_paths", "get_path", "set_path", "use_path",
    "get_num_threads", "set_num_threads",
]

_EXT = None
_EXT_ERROR = None
_BUILD_ERROR_FILE = os.path.join(os.path.dirname(__file__), "_gsa_cpu_build_error.txt")
INSTALL_HINT = (
    "build the C++ extension: `pip install -e .` (or `python setup.py build_ext --inplace`) "
    "with a C++17 compiler and pybind11 present"
)


def _apply_env(ext) -> None:
    path = os.environ.get("GSA_CPU_PATH", "").strip()
    if path:
        ext.set_path(path)  # raises on an unknown or unsupported path: say so at first use
    threads = os.environ.get("GSA_CPU_THREADS", "").strip()
    if threads:
        ext.set_num_threads(int(threads))
    elif "torch" in sys.modules:
        # follow torch's intra-op thread count (it honours OMP_NUM_THREADS and CPU affinity)
        ext.set_num_threads(max(1, int(sys.modules["torch"].get_num_threads())))


def extension():
    """The compiled module ``cpu_ops._gsa_cpu`` (imported once); raises ImportError with the reason."""
    global _EXT, _EXT_ERROR
    if _EXT is not None:
        return _EXT
    if _EXT_ERROR is not None:
        raise ImportError(_EXT_ERROR)
    try:
        from cpu_ops import _gsa_cpu as ext
    except ImportError as exc:
        why = f"the C++ CPU extension cpu_ops._gsa_cpu is not built ({exc})"
        if os.path.exists(_BUILD_ERROR_FILE):
            with open(_BUILD_ERROR_FILE, encoding="utf-8") as f:
                why += f"; the build at install time failed: {f.read().strip()}"
        _EXT_ERROR = why
        raise ImportError(why) from None
    _apply_env(ext)
    _EXT = ext
    return ext


def probe() -> Tuple[bool, str]:
    """``(True, "ok ...")`` when the extension loads, else ``(False, why)``."""
    try:
        ext = extension()
    except ImportError as exc:
        return False, str(exc)
    except Exception as exc:  # e.g. GSA_CPU_PATH names a path this CPU lacks
        return False, f"cpu_ops._gsa_cpu loaded but could not be configured: {type(exc).__name__}: {exc}"
    return True, (
        f"ok (C++ extension; code paths here: {', '.join(ext.supported_paths())}; "
        f"active: {ext.get_path()}; threads: {ext.get_num_threads()})"
    )


def available() -> bool:
    return probe()[0]


def supported_paths() -> List[str]:
    """Code paths this CPU can run: a subset of ``["portable", "avx2", "avx512"]``."""
    return list(extension().supported_paths())


def get_path() -> str:
    return extension().get_path()


def set_path(name: str) -> None:
    """Force code path ``name`` (``portable``, ``avx2``, ``avx512``) for all later calls."""
    extension().set_path(name)


@contextlib.contextmanager
def use_path(name: str) -> Iterator[None]:
    """Run the block on code path ``name``, then restore the previous one."""
    ext = extension()
    old = ext.get_path()
    ext.set_path(name)
    try:
        yield
    finally:
        ext.set_path(old)


def get_num_threads() -> int:
    return extension().get_num_threads()


def set_num_threads(n: int) -> None:
    """Threads used over rows and block ranges (default: the machine's cores)."""
    extension().set_num_threads(int(n))


def register() -> None:
    """Register backend ``cpu`` with gsa.dispatch (cheap; never imports the extension)."""
    from gsa.dispatch import Backend, register_backend

    from cpu_ops import _kernels, _mlp_kernels

    register_backend(
        Backend(
            name="cpu",
            device_types=("cpu",),
            kernels={**_kernels.KERNELS, **_mlp_kernels.KERNELS},
            priority=10,
            probe=probe,
            install_hint=INSTALL_HINT,
        )
    )
