"""``gsa crosscheck``: every available backend against the spec, here or against a golden bundle.

    gsa crosscheck                      # seeded grid, reference on CPU vs every backend here
    gsa crosscheck --save DIR           # also write a golden bundle (inputs + reference outputs)
    gsa crosscheck --golden DIR         # check this machine's backends against a bundle from elsewhere

The grid (``gsa._crosscheck_cases``) covers GQA and MLA, ragged lengths,
partial last blocks, ties, and budgets above and below the block count.
Comparisons follow the spec: exact for sign bits, selections, tables and
lengths; exact outside the spec-2 projection band for hash codes; dtype
tolerances for attention. Rows of the printed table are ``backend@device``
(every registered, available backend on every device type it serves that is
present, plus the reference on each accelerator); ``-`` means the backend has
no kernel for that op. Exit status: 0 all pass, 1 a mismatch or error, 2 bad
usage or an unreadable bundle.

A bundle is ``manifest.json`` (versions, spec version, case list, sha256 of the
tensor files) + ``inputs.safetensors`` + ``expected.safetensors``.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["add_arguments", "run", "main", "save_bundle", "load_bundle", "targets"]

BUNDLE_FORMAT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="", help="comma-separated backend names (default: all available)")
    parser.add_argument("--devices", default="", help="comma-separated device types (default: all present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated grid (default 0)")
    parser.add_argument("--size", choices=("small", "full"), default="full", help="grid size (default full)")
    parser.add_argument("--save", metavar="DIR", help="write a golden bundle of the grid to DIR")
    parser.add_argument("--golden", metavar="DIR", help="check against the golden bundle in DIR instead of a fresh grid")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--npu-triton", action="store_true",
                        help="also check npu_ops.triton (the Ascend-shaped Triton kernels) on CPU/CUDA tensors "
                             "as target 'npu_triton' (CPU needs TRITON_INTERPRET=1)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every failure, not the first 20")


# ----------------------------------------------------------------------------- targets

def _present_devices() -> List[str]:
    from gsa import dispatch

    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    npu = dispatch.backends().get("npu")
    if npu is not None and npu.available and hasattr(torch, "npu") and torch.npu.is_available():
        devs.append("npu")
    return devs


def targets(only_backends: Optional[List[str]] = None, only_devices: Optional[List[str]] = None,
            include_cpu_reference: bool = True) -> Tuple[List[Tuple[str, str]], Dict[str, str]]:
    """``[(backend, device_type)]`` to check, and ``{backend: why skipped}``."""
    from gsa import dispatch

    devs = [d for d in _present_devices() if not only_devices or d in only_devices]
    out, skipped = [], {}
    for name, b in sorted(dispatch.backends().items()):
        if only_backends and name not in only_backends:
            continue
        ok, why = b.status()
        if not ok:
            skipped[name] = why
            continue
        for dev in devs:
            if name == "reference":
                if dev != "cpu" or include_cpu_reference:
                    out.append((name, dev))
            elif b.serves(dev):
                out.append((name, dev))
    for name in only_backends or []:
        if name not in dispatch.backends():
            skipped[name] = "not registered"
    return out, skipped


def _run_one(case, backend: str, device: str) -> Tuple[str, str]:
    from gsa import dispatch, use_backend

    from gsa._crosscheck_cases import call, clone_args, compare

    with use_backend(backend):
        if dispatch.resolve(case.op, device).name != backend:
            return "-", "no kernel"  # the forced backend would fall back to the reference
    args = clone_args(case, torch.device(device))
    try:
        with use_backend(backend):
            got = call(case, args)
    except Exception as exc:
        return "err", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in case.args]
    ok, detail = compare(case, got, case.expected, cpu_args)
    return ("ok" if ok else "FAIL"), detail


def check(cases, tgts) -> Dict[str, Any]:
    """Run every case on every target: ``{"cells": {(target, op): [pass, total, status]}, "failures": [...]}``."""
    cells: Dict[Tuple[str, str], List[Any]] = {}
    failures = []
    for backend, device in tgts:
        tgt = f"{backend}@{device}"
        for case in cases:
            status, detail = _run_one(case, backend, device)
            cell = cells.setdefault((tgt, case.op), [0, 0, "-"])
            if status == "-":
                continue
            cell[1] += 1
            if status == "ok":
                cell[0] += 1
            else:
                failures.append({"target": tgt, "case": case.name, "status": status, "detail": detail})
            cell[2] = "ok" if cell[0] == cell[1] else "FAIL"
    return {"cells": cells, "failures": failures}


def format_table(result: Dict[str, Any], tgts, ops: List[str]) -> str:
    short = {op: op.replace("_hash_encode", "_hash").replace("hash_encode", "hash").replace("_and_cache", "+cache")
             .replace("paged_decode_attention", "attention").replace("hamming_dist_top_k", "top_k") for op in ops}
    rows = [["backend@device"] + [short[o] for o in ops]]
    for backend, device in tgts:
        tgt = f"{backend}@{device}"
        row = [tgt]
        for op in ops:
            p, n, status = result["cells"].get((tgt, op), [0, 0, "-"])
            row.append("-" if n == 0 else (f"ok {p}/{n}" if p == n else f"FAIL {p}/{n}"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- bundles

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> Dict[str, str]:
    import gsa

    v = {"gsa": gsa.__version__, "spec": gsa.SPEC_VERSION, "torch": torch.__version__,
         "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("triton", "torch_npu", "numpy", "safetensors"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def save_bundle(cases, directory: str, seed: int, size: str) -> Path:
    """Write ``manifest.json``, ``inputs.safetensors`` and ``expected.safetensors`` to ``directory``."""
    from safetensors.torch import save_file

    import gsa
    from gsa import dispatch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    inputs, expected, entries = {}, {}, []
    seen: Dict[int, str] = {}  # cases share input tensors: store each once
    for i, case in enumerate(cases):
        args = []
        for j, a in enumerate(case.args):
            if isinstance(a, torch.Tensor):
                key = seen.get(id(a))
                if key is None:
                    key = seen[id(a)] = f"{i:03d}/arg{j}"
                    inputs[key] = a.contiguous().clone()
                args.append({"tensor": key})
            elif isinstance(a, list) and a and all(isinstance(t, torch.Tensor) for t in a):
                keys = [f"{i:03d}/arg{j}.{n}" for n in range(len(a))]  # spec 12's weight lists
                for key, t in zip(keys, a):
                    inputs[key] = t.contiguous().clone()
                args.append({"tensors": keys})
            else:
                args.append({"value": a})
        outs = []
        for j, t in enumerate(case.expected):
            key = f"{i:03d}/out{j}"
            expected[key] = t.contiguous()
            outs.append(key)
        entries.append({"name": case.name, "op": case.op, "rule": case.rule, "mutated": case.mutated,
                        "tol": case.tol, "args": args, "expected": outs})
    save_file(inputs, str(d / "inputs.safetensors"))
    save_file(expected, str(d / "expected.safetensors"))
    manifest = {
        "format": BUNDLE_FORMAT, "spec_version": gsa.SPEC_VERSION, "versions": _versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "size": size, "expected_from": "reference@cpu (float64 projections)",
        "backends_available": sorted(n for n, b in dispatch.backends().items() if b.available),
        "sha256": {f: _sha256(d / f) for f in ("inputs.safetensors", "expected.safetensors")},
        "cases": entries,
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return d


class BundleError(Exception):
    """A golden bundle that cannot be used (missing files, checksum or version mismatch)."""


def load_bundle(directory: str):
    """Cases (with expected outputs) and the manifest of a bundle; raises :class:`BundleError`."""
    from safetensors.torch import load_file

    import gsa
    from gsa._crosscheck_cases import Case

    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {d / 'manifest.json'}: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r}, this gsa reads {BUNDLE_FORMAT}")
    if manifest.get("spec_version") != gsa.SPEC_VERSION:
        raise BundleError(f"bundle made for spec {manifest.get('spec_version')!r}, this gsa implements {gsa.SPEC_VERSION!r}")
    for f, digest in manifest.get("sha256", {}).items():
        if not (d / f).is_file():
            raise BundleError(f"missing {d / f}")
        if _sha256(d / f) != digest:
            raise BundleError(f"{f}: sha256 differs from the manifest (bundle modified or truncated)")
    inputs = load_file(str(d / "inputs.safetensors"))
    expected = load_file(str(d / "expected.safetensors"))
    cases = []
    for e in manifest["cases"]:
        args = [inputs[a["tensor"]] if "tensor" in a else [inputs[k] for k in a["tensors"]] if "tensors" in a
                else a["value"] for a in e["args"]]
        cases.append(Case(e["name"], e["op"], args, rule=e["rule"], mutated=e["mutated"], tol=e["tol"],
                          expected=[expected[k] for k in e["expected"]]))
    return cases, manifest


# ----------------------------------------------------------------------------- entry points

def run(args: argparse.Namespace) -> int:
    """``gsa crosscheck``; returns the exit status."""
    from gsa import dispatch
    from gsa._crosscheck_cases import build_cases

    only_b = [s.strip() for s in args.backends.split(",") if s.strip()] or None
    only_d = [s.strip() for s in args.devices.split(",") if s.strip()] or None
    if args.golden and args.save:
        print("gsa crosscheck: --golden and --save exclude each other", file=sys.stderr)
        return 2
    if args.golden:
        try:
            cases, manifest = load_bundle(args.golden)
        except BundleError as exc:
            print(f"gsa crosscheck: bad golden bundle: {exc}", file=sys.stderr)
            return 2
        mv = manifest.get("versions", {})
        print(f"golden bundle {args.golden}: {len(cases)} cases, spec {manifest['spec_version']}, made "
              f"{manifest.get('created_utc', '?')} on {mv.get('platform', '?')} (torch {mv.get('torch', '?')})")
    else:
        cases = build_cases(args.seed, args.size)
        print(f"generated grid: {len(cases)} cases (seed {args.seed}, size {args.size}); expected = reference@cpu")
    if args.npu_triton:
        _register_npu_triton(only_b)
    try:
        # reference@cpu is a target too: against a bundle it must reproduce the other machine
        tgts, skipped = targets(only_b, only_d)
        return _report(args, cases, tgts, skipped)
    finally:
        if args.npu_triton:
            # crosscheck-only backend: never leave it for automatic selection
            dispatch._REGISTRY.pop("npu_triton", None)


def _register_npu_triton(only_b) -> None:
    from gsa import dispatch

    if only_b is not None and "npu_triton" not in only_b:
        only_b.append("npu_triton")

    def probe():
        try:
            import npu_ops.triton as T  # noqa: F401  (imports triton)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return False, "no GPU and TRITON_INTERPRET is not 1"
        return True, "npu_ops.triton kernels"

    def kernel(op):
        def fn(*a):
            import npu_ops.triton as T

            return getattr(T, op)(*a)
        return fn

    ops = ("hash_encode", "hash_encode_and_cache", "mla_hash_encode", "mla_hash_encode_and_cache",
           "hamming_dist_top_k", "kv_select")
    dispatch.register_backend(dispatch.Backend(
        name="npu_triton", device_types=("cpu", "cuda"), kernels={op: kernel(op) for op in ops},
        priority=-50, probe=probe))


def _report(args, cases, tgts, skipped) -> int:
    from gsa import dispatch

    for name, why in sorted(skipped.items()):
        print(f"  skipped backend {name}: {why}")
    ops = [op for op in dispatch.OP_NAMES if any(c.op == op for c in cases)]
    result = check(cases, tgts)
    print(format_table(result, tgts, ops))
    fails = result["failures"]
    for f in fails if args.verbose else fails[:20]:
        print(f"  {f['status']} {f['target']} {f['case']}: {f['detail']}")
    if len(fails) > 20 and not args.verbose:
        print(f"  ... {len(fails) - 20} more (use -v)")
    if args.save:
        path = save_bundle(cases, args.save, args.seed, args.size)
        print(f"golden bundle written to {path} (verify elsewhere: gsa crosscheck --golden {path})")
    if args.json:
        out = {"targets": [f"{b}@{d}" for b, d in tgts], "skipped": skipped, "failures": fails,
               "cells": {f"{t}|{op}": v for (t, op), v in result["cells"].items()}, "versions": _versions()}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if not tgts:
        print("gsa crosscheck: nothing to check (no backend available)", file=sys.stderr)
        return 1
    print(f"{'PASS' if not fails else 'FAIL'}: {len(tgts)} targets, {len(fails)} failing case runs")
    return 0 if not fails else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gsa crosscheck", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # python -m gsa.crosscheck
    sys.exit(main())
