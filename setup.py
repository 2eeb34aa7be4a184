"""gsa-ops: hash-aware top-k sparse attention operators (GSA).

Runtime needs torch and numpy only. Backends are optional and register
themselves with ``gsa.dispatch`` through the ``gsa.backends`` entry point group.
"""
from setuptools import find_packages, setup

EXTRAS = {
    "test": ["pytest>=7", "hypothesis>=6"],
    "triton": ["triton>=3.0"],
    # torch_npu is never installed in CI: importing torch with torch_npu present
    # and no CANN toolkit fails unless TORCH_DEVICE_BACKEND_AUTOLOAD=0.
    "npu": ["torch_npu"],
    "plot": ["matplotlib"],
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
    package_data={"gsa.configs": ["*.json"]},
    include_package_data=True,
    install_requires=["torch>=2.4", "numpy"],
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
)
