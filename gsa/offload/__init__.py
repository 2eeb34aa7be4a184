"""GSA offload: the KV cache of long requests in host memory, a device pool of
hot blocks, prefetch, and a CPU top-k mode (docs/offload.md).

Device-agnostic orchestration over :mod:`gsa.ops` / :mod:`gsa.dispatch` (no
backend is imported here).
"""
from gsa.offload.cpu_topk import CPUTopK, merge_lagged
from gsa.offload.mover import BlockMover
from gsa.offload.offloaded import OffloadedGSA, min_pool_blocks
from gsa.offload.residency import PoolTooSmallError, ResidencyMap

__all__ = ["OffloadedGSA", "ResidencyMap", "BlockMover", "CPUTopK", "PoolTooSmallError", "min_pool_blocks",
           "merge_lagged"]
