"""Block copies between one layer's host KV and its device pool.

``host_k, host_v [NB + 1, bs, Hkv, D]`` (pinned host memory on an accelerator;
plain host memory on CPU; block ``NB`` is scratch for skipped token writes) and ``pool_k, pool_v [S + 1, bs, Hkv, D]`` on the
device (slot ``S`` is scratch). Requests come from
:class:`gsa.offload.residency.ResidencyMap` as fixed-width ``(src, dst)`` lists.

Three modes:

* ``direct``: host and pool tensors on one device (the CPU "device pool" of the
  tests): one batched ``index_select`` + ``index_copy_``, no sync, copies all
  ``N`` entries (padding copies block 0 into the scratch slot).
* ``staged``: the accelerator path with only torch ops: the ``(src, dst)`` list
  and the miss count go to the host (**one host sync per fetch**), the missing
  blocks are gathered on the host into a pinned staging buffer, copied
  host->device on a side copy stream and scattered into the pool there; an
  event makes the compute stream wait before attention reads the pool.
* ``uva`` (the default on CUDA with the Triton backend): a backend kernel on the
  copy stream reads the pinned host KV through unified addressing and writes the
  pool slots, taking the device ``(src, dst)`` lists as they are: **no host
  sync**, many programs reading over PCIe at once. New token rows go to the host
  KV the same way (a kernel writing pinned memory). The kernels come from the
  backend's hot path (``gather_blocks`` / ``scatter_rows``, e.g.
  ``cuda_ops/offload_copy.py``); a backend without them gets ``staged``.

Writes of new tokens go to the host KV (the source of truth) and, when the
block is resident, to its pool slot too (write-through; see ``OffloadedGSA``).
In staged mode the host write lands lazily: the rows are copied device->host on
the copy stream and scattered into the host KV before the next host gather.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from gsa.hotpath import hot_path_for

__all__ = ["BlockMover"]

Tensor = torch.Tensor


def uva_copier(host_k: Tensor, pool_k: Tensor) -> Optional[Any]:
    """The backend object with ``gather_blocks`` / ``scatter_rows`` for this pair, or
    ``None`` (host memory not pinned, or the pool's backend has no such kernels)."""
    if pool_k.device.type != "cuda" or host_k.device.type != "cpu" or not host_k.is_pinned():
        return None
    hp = hot_path_for(pool_k.device)
    return hp if hasattr(hp, "gather_blocks") and hasattr(hp, "scatter_rows") else None


class BlockMover:
    """Copies blocks of one layer (see the module docstring). ``mode``: ``"direct"``,
    ``"staged"``, ``"uva"`` or ``None`` (direct when host and pool share a device,
    else uva where the backend has the kernels, else staged). ``copier``: the
    object with ``gather_blocks`` / ``scatter_rows`` for ``uva`` (default: the pool
    device's backend)."""

    def __init__(self, host_k: Tensor, host_v: Tensor, pool_k: Tensor, pool_v: Tensor,
                 mode: Optional[str] = None, copy_stream=None, copier: Optional[Any] = None):
        same = host_k.device == pool_k.device
        if copier is None and not same:
            copier = uva_copier(host_k, pool_k)
        self.copier = copier
        self.mode = mode or ("direct" if same else ("uva" if copier is not None else "staged"))
        if self.mode not in ("direct", "staged", "uva"):
            raise ValueError(f"BlockMover: 'mode' must be 'direct', 'staged' or 'uva', got {mode!r}")
        if self.mode == "uva" and copier is None:
            raise ValueError("BlockMover: mode 'uva' needs pinned host memory and a backend with "
                             "gather_blocks / scatter_rows for the pool's device (the Triton backend on CUDA)")
        if self.mode == "direct" and not same:
            raise ValueError(f"BlockMover: mode 'direct' needs host and pool on one device, got "
                             f"{host_k.device} and {pool_k.device}")
        self.host_k, self.host_v, self.pool_k, self.pool_v = host_k, host_v, pool_k, pool_v
        dev = pool_k.device
        self._dev_mod = torch.get_device_module(dev) if dev.type != "cpu" and self.mode != "direct" else None
        self.stream = copy_stream
        if self.stream is None and self._dev_mod is not None:
            self.stream = self._dev_mod.Stream(device=dev)
        self._pin = dev.type not in ("cpu", "meta")  # pinned staging: truly asynchronous copies
        self._done = None  # event after the last pool write on the copy stream
        self._pending: List[Tuple[object, Tensor, Tensor, Tensor]] = []  # staged host writes
        self.bytes_h2d = 0  # staged mode: bytes copied host->device (host-known)
        self._bufs: List[Optional[List[Tensor]]] = [None, None]  # double-buffered pinned staging
        self._buf_events: List[object] = [None, None]
        self._buf_i = 0

    # ------------------------------------------------------------------ reads into the pool
    def fetch(self, src: Tensor, dst: Tensor, n_miss: Tensor) -> None:
        """Copy host blocks ``src int64 [N]`` into pool slots ``dst int64 [N]``
        (the first ``n_miss`` entries are real, the rest padding)."""
        if self.mode == "direct":
            for host, pool in ((self.host_k, self.pool_k), (self.host_v, self.pool_v)):
                pool.index_copy_(0, dst, host.index_select(0, src))
            return
        if self.mode == "uva":
            # keep: lists made by torch ops are freed on return, while the copy stream still reads them
            self._on_copy_stream(lambda: self.copier.gather_blocks(self.host_k, self.host_v, self.pool_k,
                                                                   self.pool_v, src, dst, n_miss),
                                 keep=(src, dst, n_miss) if src.device.type == "cuda" else ())
            return
        lists = torch.stack([src, dst, n_miss.expand_as(src)]).to("cpu")  # the host sync
        n = int(lists[2, 0])
        if n == 0:
            return
        self.flush_writes()
        s, d = lists[0, :n], lists[1, :n]
        if self._dev_mod is None:  # staged on CPU (tests): same copies, no stream
            for host, pool in ((self.host_k, self.pool_k), (self.host_v, self.pool_v)):
                pool.index_copy_(0, d.to(pool.device), host.index_select(0, s).to(pool.device))
            self.bytes_h2d += 2 * n * self.host_k[0].numel() * self.host_k.element_size()
            return
        staged = self._staging(n)
        for host, buf in zip((self.host_k, self.host_v), staged):
            torch.index_select(host, 0, s, out=buf)  # gather straight into pinned memory

        def copy_in():
            d_dev = (d.pin_memory() if self._pin else d).to(self.pool_k.device, non_blocking=True)
            for buf, pool in zip(staged, (self.pool_k, self.pool_v)):
                pool.index_copy_(0, d_dev, buf.to(pool.device, non_blocking=True))
        # after the sync the map is computed; the copy stream still waits for the compute stream's
        # queue (attention of the previous layer may read the slots being replaced)
        self._buf_events[self._buf_i] = self._on_copy_stream(copy_in)
        self.bytes_h2d += sum(b.numel() * b.element_size() for b in staged)

    def _on_copy_stream(self, fn, keep=()):
        """Run ``fn`` (kernel launches / copies) on the copy stream after the work queued so
        far on the current stream; ``wait()`` then orders the compute stream after it.
        Returns the event recorded after ``fn`` (``None`` on CPU)."""
        if self._dev_mod is None:  # CPU (interpreter tests): in order anyway
            fn()
            return None
        ready = self._dev_mod.Event()
        ready.record()
        with self._dev_mod.stream(self.stream):
            self.stream.wait_event(ready)  # the fork (under capture: the copy stream joins it)
            try:
                fn()
                for t in keep:  # the compute stream must not reuse them before the copy has read them
                    t.record_stream(self.stream)
            finally:
                # recorded even when fn raised, so wait() can join the fork back (a capture that
                # ends with it forked fails with "unjoined work" and hides fn's error)
                self._done = self._dev_mod.Event()
                self._done.record(self.stream)
        return self._done

    def _staging(self, n: int) -> List[Tensor]:
        """Pinned K and V staging views for ``n`` blocks, alternating between two
        buffers; waits until the copy that last read the chosen buffer is done."""
        self._buf_i ^= 1
        ev = self._buf_events[self._buf_i]
        if ev is not None:
            ev.synchronize()
        bufs = self._bufs[self._buf_i]
        if bufs is None or bufs[0].shape[0] < n:
            cap = 1 << (n - 1).bit_length()  # grows by powers of two with the largest fetch seen
            bufs = [torch.empty((cap, *self.host_k.shape[1:]), dtype=self.host_k.dtype, pin_memory=self._pin)
                    for _ in range(2)]
            self._bufs[self._buf_i] = bufs
        return [b[:n] for b in bufs]

    def wait(self) -> None:
        """Make the current (compute) stream wait for the copies issued so far."""
        if self._done is not None and self._dev_mod is not None:
            self._dev_mod.current_stream(self.pool_k.device).wait_event(self._done)
            self._done = None

    # ------------------------------------------------------------------ writes of new tokens
    def write_host(self, slots: Tensor, k: Tensor, v: Tensor, slots_host: Optional[Tensor] = None) -> None:
        """Write token rows ``k, v [T, Hkv, D]`` at flat slots ``slots int [T]``
        (``block * bs + offset``; ``-1`` skips) of the host KV."""
        if self.mode == "uva":
            k, v = k.contiguous(), v.contiguous()
            slots = slots.to(self.pool_k.device)
            self._on_copy_stream(lambda: self.copier.scatter_rows(self.host_k, self.host_v, slots, k, v),
                                 keep=(slots, k, v) if k.device.type == "cuda" else ())
            return
        if self.mode == "direct" or self._dev_mod is None:
            self._scatter_host(slots.to(self.host_k.device), k.to(self.host_k.device), v.to(self.host_k.device))
            return
        sh = slots_host if slots_host is not None else slots.to("cpu")  # sync unless the caller has it
        kh = torch.empty(k.shape, dtype=k.dtype, pin_memory=self._pin)
        vh = torch.empty(v.shape, dtype=v.dtype, pin_memory=self._pin)

        def copy_out():
            kh.copy_(k, non_blocking=True)
            vh.copy_(v, non_blocking=True)
        ev = self._on_copy_stream(copy_out, keep=(k, v) if k.device.type == "cuda" else ())
        self._pending.append((ev, sh.clone(), kh, vh))

    def flush_writes(self) -> None:
        """Land staged host writes (waits for their device->host copies)."""
        for ev, sh, kh, vh in self._pending:
            ev.synchronize()
            self._scatter_host(sh, kh, vh)
        self._pending.clear()

    def _scatter_host(self, slots: Tensor, k: Tensor, v: Tensor) -> None:
        # skipped tokens (-1) go to the scratch block NB (the host KV has NB + 1 blocks): no host read
        nb, bs = self.host_k.shape[:2]
        slots = torch.where(slots >= 0, slots.long(), (nb - 1) * bs)
        for host, x in ((self.host_k, k), (self.host_v, v)):
            host.view(nb * bs, *host.shape[2:]).index_copy_(0, slots, x.to(host.dtype))
