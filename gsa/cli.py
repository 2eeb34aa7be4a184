"""The ``gsa`` command line (also ``python -m gsa``).

Subcommands come from :data:`COMMANDS`, a registry mapping a name to
``"module"`` or ``"module:attribute"``; the target is imported only when that
subcommand runs and exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Other packages or helpers add commands by adding their module (a missing
module gives a clear "not installed in this build" message).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Dict, List, Optional, Tuple

__all__ = ["COMMANDS", "main"]

#: name -> (import target, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "configs": ("gsa.cli:ConfigsCommand", "list the shipped model configs"),
    "validate": ("gsa.cli:ValidateCommand", "validate GSA config JSON files"),
    "info": ("gsa.cli:InfoCommand", "backends on this machine, and why others are not available"),
    "demo": ("gsa.eval.demo", "the main job: passkey retrieval on SmolLM2-135M-Instruct, dense vs GSA (real model, CPU or --device cuda)"),
    "demo-synthetic": ("gsa.demo", "synthetic decode workload: selection recall, attention error and time per backend"),
    "crosscheck": ("gsa.crosscheck", "cross-check every backend against the reference"),
    "eval": ("gsa.eval.cli", "real-model evaluation"),
    "train-hash": ("gsa.eval.train", "train hash weights for a model"),
    "calibrate-centre": ("gsa.eval.centre", "per-head mean keys for centred codes (spec 13), and PCA projections"),
    "data": ("gsa.eval.assets", "fetch / prepare evaluation data"),
}


class ConfigsCommand:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from gsa.config import GSAConfig, shipped_config_paths

        rows = []
        for path in shipped_config_paths():
            c = GSAConfig.load(path)
            heads = f"{c.num_attention_heads}" + (" (MLA)" if c.is_mla else f"/{c.num_key_value_heads}")
            dim = f"{c.kv_lora_rank}+{c.qk_rope_head_dim}" if c.is_mla else str(c.head_dim)
            bits = f"{c.hash_bits_kv_lora}+{c.hash_bits_qk_rope}" if c.is_mla else str(c.hash_bits)
            n_sparse = sum(r < 1 for r in c.top_k_ratio_per_layer)
            rows.append({"model_name": c.model_name, "layers": c.num_hidden_layers, "heads": heads, "head_dim": dim,
                         "hash_bits": bits, "sparse_layers": n_sparse, "file": path.name})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        cols = ["model_name", "layers", "heads", "head_dim", "hash_bits", "sparse_layers", "file"]
        _print_table(cols, [[str(r[c]) for c in cols] for r in rows])
        return 0


class ValidateCommand:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE_OR_MODEL",
                            help="config JSON file(s), or shipped model name(s) such as Qwen3-4B (see `gsa configs`)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from gsa.config import GSAConfig, GSAConfigError, config_errors

        status = 0
        for f in args.files:
            path = Path(f)
            if not path.exists() and (path.suffix == ".json" or "/" in f or "\\" in f):
                print(f"error: {f}: cannot read: no such file", file=sys.stderr)
                status = 1
                continue
            if not path.exists():
                try:  # not a file: a shipped model's name?
                    path = Path(GSAConfig.for_model(f).source)
                except GSAConfigError as exc:
                    print(f"error: {f}: no such file, and {exc}", file=sys.stderr)
                    status = 1
                    continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                print(f"error: {path}: cannot read a JSON config: {exc}", file=sys.stderr)
                status = 1
                continue
            errors = config_errors(data, source=path)
            if errors:
                for e in errors:
                    print(f"error: {e}", file=sys.stderr)
                status = 1
                continue
            c = GSAConfig.load(path)
            kind = "MLA" if c.is_mla else "GQA"
            n_sparse = sum(r < 1 for r in c.top_k_ratio_per_layer)
            print(f"ok: {path}: {c.model_name} ({kind}, {c.num_hidden_layers} layers, {n_sparse} sparse, "
                  f"{c.hash_bits} hash bits, chunk {c.chunk_size})")
        return status


class InfoCommand:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        import gsa
        from gsa.dispatch import backend_report

        report = backend_report()
        devices = ["cpu"]
        if torch.cuda.is_available():
            devices.append(f"cuda ({torch.cuda.get_device_name(0)})")
        if hasattr(torch, "npu"):
            try:
                if torch.npu.is_available():  # type: ignore[attr-defined]
                    devices.append("npu")
            except Exception:
                pass
        if args.json:
            print(json.dumps({"gsa": gsa.__version__, "spec": gsa.SPEC_VERSION, "torch": torch.__version__,
                              "devices": devices, "backends": report}, indent=2))
            return 0
        print(f"gsa-ops {gsa.__version__} (spec {gsa.SPEC_VERSION}), torch {torch.__version__}")
        print(f"devices: {', '.join(devices)}")
        rows = []
        for name, r in report.items():
            rows.append([name, "yes" if r["available"] else "no", ",".join(r["devices"]) or "-",
                         str(len(r["ops"])), r["reason"]])
        _print_table(["backend", "available", "devices", "ops", "why / status"], rows)
        return 0


def _print_table(cols: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    widths[-1] = len(cols[-1])  # the last column is free text: no padding
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


class CommandNotInstalled(RuntimeError):
    pass


def load_command(name: str):
    """Import the object behind command ``name`` (module or ``module:attr``)."""
    target, _ = COMMANDS[name]
    mod_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        # only a missing command module (or its package) means "not in this build";
        # a missing third-party dependency of an existing module is reported as such
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise CommandNotInstalled(f"gsa: command '{name}' is not installed in this build "
                                      f"(module {mod_name} is missing)") from None
        raise CommandNotInstalled(f"gsa: command '{name}' needs the Python package '{exc.name}', which is not "
                                  f"installed ({exc})") from None
    obj = getattr(module, attr) if attr else module
    for fn in ("add_arguments", "run"):
        if not callable(getattr(obj, fn, None)):
            raise CommandNotInstalled(f"gsa: command '{name}': {target} has no {fn}()")
    return obj


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="gsa", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="GSA (hash-aware top-k sparse attention) operators.",
        epilog=f"commands:\n{lines}\n\nRun 'gsa COMMAND --help' for a command's options.",
        usage="gsa [-h] [--version] COMMAND [ARGS...]",
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("--version", action="store_true", help="print the version and exit")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        import gsa

        print(f"gsa-ops {gsa.__version__} (spec {gsa.SPEC_VERSION})")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"gsa: unknown command '{name}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        cmd = load_command(name)
    except CommandNotInstalled as exc:
        print(str(exc), file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"gsa {name}", description=COMMANDS[name][1])
    cmd.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(cmd.run(args) or 0)
    except BrokenPipeError:  # `gsa configs | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
