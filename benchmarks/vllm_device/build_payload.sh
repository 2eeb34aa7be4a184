#!/bin/bash
# Host side (PyPI reachable): the payload that carries vLLM 0.26.0 to the GPU machine, which has
# no network, in parts that fit the device tool's 64 MiB per call (the repo travels too).
# Output (git-ignored): .whl/vllm_c1, .whl/vllm_c2 (31 MiB xz parts), .whl/vllm_c3 (the last
# part, the small wheels vLLM's offline LLM path imports, sha256 files). Run from the repo root.
# vLLM 0.26.0 is the newest release pinning torch 2.11.0, the device image's torch.
set -euo pipefail
work=${WORK:-/tmp/gsa_vllm_payload}; rm -rf "$work"; mkdir -p "$work/unpacked" "$work/keep" "$work/wheels"
plat="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp"
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat="$plat --platform $p"
done
python3 -m pip download $plat -d "$work" vllm==0.26.0
unzip -q "$work"/vllm-0.26.0-*.whl -d "$work/unpacked"
# Left behind (what then cannot load: MoE models, FlashAttention 2, the Rust front end):
# FA2 (Hopper runs FA3), fused-MoE kernels, vllm-rs, deep_gemm builds for other Pythons,
# vendored CUTLASS headers, the API server's static web files.
(cd "$work/unpacked" && tar cf - --exclude '__pycache__' \
   --exclude '_vllm_fa2_C.abi3.so' --exclude '_moe_C_stable_libtorch.abi3.so' --exclude 'vllm/vllm-rs' \
   --exclude 'vllm/third_party/deep_gemm/_C.cpython-3[0-9][0-9]*' --exclude 'vllm/third_party/deep_gemm/include' \
   --exclude 'vllm/third_party/fmha_sm100/cutlass' --exclude 'vllm/entrypoints/serve/instrumentator/static' vllm \
 | tar xf - -C "$work/keep")
cp -r "$work/unpacked"/vllm/third_party/deep_gemm/_C.cpython-312* "$work/keep/vllm/third_party/deep_gemm/" 2>/dev/null || true
mkdir -p "$work/keep/vllm-0.26.0.dist-info"
cp "$work"/unpacked/vllm-0.26.0.dist-info/{METADATA,WHEEL,entry_points.txt,top_level.txt} "$work/keep/vllm-0.26.0.dist-info/"
(cd "$work/keep" && tar cf - vllm vllm-0.26.0.dist-info | xz -9 -T0 > "$work/vllm-trim.tar.xz")
# What the offline LLM path imports and the device image lacks (the list was found by running it).
python3 -m pip download $plat -d "$work/wheels" \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
  openai==2.54.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 pyzmq==27.3.0 cbor2==6.3.0 msgspec==0.22.0 \
  pybase64==1.5.1 cachetools==8.0.2
rm -rf .whl/vllm_c1 .whl/vllm_c2 .whl/vllm_c3; mkdir -p .whl/vllm_c1 .whl/vllm_c2 .whl/vllm_c3
(cd "$work" && split -b 31M -d -a 2 vllm-trim.tar.xz vllm-trim.tar.xz.part-)
mv "$work/vllm-trim.tar.xz.part-00" .whl/vllm_c1/; mv "$work/vllm-trim.tar.xz.part-01" .whl/vllm_c2/
mv "$work"/vllm-trim.tar.xz.part-0[2-9] .whl/vllm_c3/
cp "$work"/wheels/*.whl .whl/vllm_c3/
(cd "$work" && sha256sum vllm-trim.tar.xz) > .whl/vllm_c3/tar.sha256
(for d in .whl/vllm_c1 .whl/vllm_c2 .whl/vllm_c3; do (cd "$d" && sha256sum vllm-trim.tar.xz.part-*); done) > .whl/vllm_c3/parts.sha256
(cd .whl/vllm_c3 && sha256sum *.whl > wheels.sha256)
du -sh .whl/vllm_c*
