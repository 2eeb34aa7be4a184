"""gsa-ops: hash-aware top-k sparse attention (GSA) operators.

Public API:

* ``gsa.ops``: the validated ops (``torch.ops.gsa.*`` underneath):
  ``sign_bits_pack``, ``hash_encode``, ``hash_encode_and_cache``,
  ``mla_hash_encode``, ``mla_hash_encode_and_cache``, ``hamming_dist_top_k``,
  ``kv_select``, ``paged_decode_attention``.
* ``gsa.reference``: the pure-torch reference of docs/spec.md.
* ``gsa.use_backend``: force a backend (``reference``, ``cpu``, ``triton``, ``npu``).
"""
from gsa import ops, reference
from gsa.dispatch import BackendUnavailableError, use_backend
from gsa.validate import GSAInputError, set_debug
from gsa.config import GSAConfig, GSAConfigError
from gsa.sparse import GSASparse

__version__ = "0.1.0"
SPEC_VERSION = "1.1"

__all__ = ["GSAConfig", "GSAConfigError", "GSASparse", "ops", "reference", "use_backend", "BackendUnavailableError", "GSAInputError", "set_debug", "__version__", "SPEC_VERSION"]
