"""tests/test_vllm_api.py in the per-release venvs that ``ci/vllm_versions.sh`` builds (vLLM 0.23,
0.26, 0.33; opt-in, not built by CI). Each found venv runs the API check in a subprocess; a venv
that is absent is a skip with the command that builds it."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("GSA_VV_CACHE") or pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "gsa-vllm-versions")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.23.0", "0.26.0", "0.33.0"])
def test_vllm_api_in_release_venv(version):
    py = CACHE / f"v{version}" / "bin" / "python"
    if not (CACHE / f"v{version}" / ".gsa-stamp").is_file():
        pytest.skip(f"no venv for vLLM {version} in {CACHE} (bash ci/vllm_versions.sh {version} builds it)")
    got = subprocess.run([str(py), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert got.returncode == 0 and got.stdout.strip().splitlines()[-1] == version, got.stderr[-2000:]
    res = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                          "tests/test_vllm_api.py"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout[-2000:]
    print(res.stdout.strip().splitlines()[-1], file=sys.stderr)
