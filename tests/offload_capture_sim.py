"""A CPU stand-in for CUDA-graph capture of an offloaded decode step (tests only).

Two checks that CUDA makes during ``torch.cuda.graph`` capture, reproduced on CPU so the
CI can hold the offload code (``gsa/offload``) to them without a GPU:

* :class:`FakeCaptureDevice` replaces ``torch.cuda`` in :class:`gsa.offload.BlockMover`
  (``mover._dev_mod``) and tracks streams and events as CUDA's capture does: a stream that
  waits on an event recorded on a capturing stream joins the capture (a fork); at
  :meth:`FakeCaptureDevice.end_capture` every stream that joined must have been joined back
  (the origin stream waited on an event recorded on it after its last work), else
  :class:`CaptureError` "capturing stream has unjoined work"; waiting inside the capture on
  an event recorded outside it, and host synchronisation inside it, are errors as well.
* :class:`HostCopyGuard` (a ``TorchDispatchMode``) flags, for ops issued from ``gsa/offload``
  code, what a capture rejects or silently bakes in on CUDA: a host-made value copied into a
  tensor (``t[i] = 0`` or ``t.copy_(torch.tensor(...))``: on CUDA a pageable host->device
  copy), a host read of a device value (``.item()``, ``int(t)``) and ops whose output shape
  depends on device data (``nonzero``). Ops issued inside the backends (the reference / C++
  selection on CPU) are not the offload code's and are not checked here (on CUDA the Triton
  hot path runs instead; the GPU tests capture it).

:class:`FakeUvaCopier` stands in for ``cuda_ops/offload_copy.py`` (``gather_blocks`` /
``scatter_rows``) with torch index copies, and tells the fake device which stream the copy
ran on. :func:`uva_movers` swaps an :class:`OffloadedGSA`'s direct movers for uva movers
on the fake device (one shared copy stream, as on CUDA).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gsa.offload
from gsa.offload import BlockMover

_OFFLOAD_DIR = os.path.dirname(os.path.abspath(gsa.offload.__file__))  # the tree actually imported
_GSA_ROOT = os.path.dirname(os.path.dirname(_OFFLOAD_DIR))  # its project root


class CaptureError(RuntimeError):
    """What CUDA would report for an illegal operation during stream capture."""


class FakeCaptureDevice:
    """``torch.cuda``'s stream / event API as BlockMover uses it, with capture bookkeeping."""

    def __init__(self):
        dev = self
        self.capturing = False
        self.origin = None
        self.log: List[str] = []
        self.streams: list = []
        self._joined: dict = {}

        class Stream:
            def __init__(self, device=None):
                self.name = f"s{len(dev.streams)}"
                dev.streams.append(self)
                self.pos = 0  # work items enqueued so far (waits included: they are graph nodes)
                self.in_capture = False

            def wait_event(self, ev):
                dev._wait(self, ev)

            def synchronize(self):
                dev._sync(f"{self.name}.synchronize()")

        class Event:
            def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False):
                self.stream, self.pos, self.captured, self.external = None, None, False, external

            def record(self, stream=None):
                s = stream if stream is not None else dev.current
                self.stream, self.pos, self.captured = s, s.pos, dev.capturing and s.in_capture
                dev.log.append(f"record {s.name}@{s.pos}")

            def synchronize(self):
                dev._sync("event.synchronize()")

            def query(self):
                return True

        self.Stream, self.Event = Stream, Event
        self.default = Stream()
        self.current = self.default

    # -------------------------------------------------------------- torch.cuda-like API
    @contextlib.contextmanager
    def stream(self, s):
        prev, self.current = self.current, s
        try:
            yield
        finally:
            self.current = prev

    def current_stream(self, device=None):
        return self.current

    def synchronize(self, device=None):
        self._sync("device synchronize()")

    def is_current_stream_capturing(self) -> bool:
        return self.capturing and self.current.in_capture

    # -------------------------------------------------------------- work and capture
    def work(self, what: str = "kernel") -> None:
        """Something enqueued on the current stream (a kernel or a copy)."""
        s = self.current
        if self.capturing and not s.in_capture:
            raise CaptureError(f"{what} on stream {s.name}, which is not part of the capture: on CUDA it runs "
                               f"at capture time instead of at replay (and the legacy stream is illegal)")
        s.pos += 1

    def _wait(self, s, ev) -> None:
        if ev.stream is None:
            s.pos += 1
            return
        if self.capturing:
            if not ev.captured and not ev.external:
                raise CaptureError(f"stream {s.name} waits inside the capture on an event recorded outside it "
                                   f"({ev.stream.name}@{ev.pos}): cudaErrorStreamCaptureIsolation")
            if ev.captured and not s.in_capture:  # the fork: the waiting stream joins the capture
                s.in_capture = True
                self.log.append(f"fork {ev.stream.name}@{ev.pos} -> {s.name}")
            if s is self.origin and ev.stream is not self.origin:
                joined = self._joined.get(ev.stream.name, -1)
                self._joined[ev.stream.name] = max(joined, ev.pos)
                self.log.append(f"join {ev.stream.name}@{ev.pos} -> {s.name}")
        s.pos += 1

    def _sync(self, what: str) -> None:
        if self.capturing:
            raise CaptureError(f"{what} during capture (a host sync: cudaErrorStreamCaptureUnsupported)")

    def begin_capture(self) -> None:
        self.capturing, self.origin = True, self.current
        self.origin.in_capture = True
        self._joined = {}

    def unjoined(self) -> List[str]:
        """Streams in the capture whose last work the origin has not waited for."""
        out = []
        for s in self.streams:
            if s is self.origin or not s.in_capture:
                continue
            if self._joined.get(s.name, -1) < s.pos:
                out.append(f"{s.name} (work up to {s.pos}, joined up to {self._joined.get(s.name, -1)})")
        return out

    def end_capture(self) -> None:
        try:
            bad = self.unjoined()
            if bad:
                raise CaptureError("capturing stream has unjoined work: " + ", ".join(bad))
        finally:
            for s in self.streams:
                s.in_capture = False
            self.capturing = False

    @contextlib.contextmanager
    def graph(self):
        """``with torch.cuda.graph(g):`` -- like torch, ends the capture on the way out even
        when the body raised (then an end-of-capture error replaces the body's, as on CUDA)."""
        self.begin_capture()
        try:
            yield
        finally:
            self.end_capture()


class FakeUvaCopier:
    """``gather_blocks`` / ``scatter_rows`` as torch index copies (no host read of ``n_miss``:
    entries past it copy into the scratch slot, as the direct mover does), enqueued as work
    on the fake device's current stream."""

    def __init__(self, dev: FakeCaptureDevice):
        self.dev = dev

    def gather_blocks(self, host_k, host_v, pool_k, pool_v, src, dst, n_miss) -> None:
        self.dev.work("gather_blocks")
        live = torch.arange(src.shape[0], device=src.device) < n_miss
        d = torch.where(live, dst, pool_k.shape[0] - 1)
        for host, pool in ((host_k, pool_k), (host_v, pool_v)):
            pool.index_copy_(0, d, host.index_select(0, src))

    def scatter_rows(self, host_k, host_v, slots, k, v) -> None:
        self.dev.work("scatter_rows")
        nb, bs = host_k.shape[:2]
        slots = torch.where(slots >= 0, slots.long(), (nb - 1) * bs)
        for host, x in ((host_k, k), (host_v, v)):
            host.view(nb * bs, *host.shape[2:]).index_copy_(0, slots, x.to(host.dtype))


def uva_movers(off, dev: Optional[FakeCaptureDevice] = None) -> FakeCaptureDevice:
    """Give ``off`` (an :class:`OffloadedGSA` on CPU) uva movers on a fake capture device
    sharing one copy stream; returns the device."""
    dev = dev or FakeCaptureDevice()
    copy_stream = dev.Stream()
    copier = FakeUvaCopier(dev)
    for l, mv in list(off.movers.items()):
        new = BlockMover(mv.host_k, mv.host_v, mv.pool_k, mv.pool_v, mode="uva", copy_stream=copy_stream,
                         copier=copier)
        new._dev_mod = dev
        off.movers[l] = new
    return dev


# ------------------------------------------------------------------ host copies and reads
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_consecutive",
             "aten::_unique2", "aten::repeat_interleave"}
_COPY_OPS = {"aten::copy_", "aten::_to_copy"}  # (fill_ from a host scalar is legal: `t[a:b] = 0`)


def _offload_caller() -> Optional[str]:
    """``file:line`` of the nearest project frame, if it is in gsa/offload (else None)."""
    f = sys._getframe(2)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn.startswith(_GSA_ROOT + os.sep) and os.sep + "tests" + os.sep not in fn[len(_GSA_ROOT):]:
            if fn.startswith(_OFFLOAD_DIR + os.sep):
                return f"{os.path.relpath(fn, _GSA_ROOT)}:{f.f_lineno}"
            return None  # issued inside another project module (a backend, the orchestrator)
        f = f.f_back
    return None


class HostCopyGuard(TorchDispatchMode):
    """Records (or raises, ``strict=True``) the capture-breaking ops issued from gsa/offload
    code while active (see the module docstring). ``violations``: ``(op, where)``."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict
        self.violations: List[tuple] = []
        self._fresh = {}  # id -> tensor made from a host value (aten::lift_fresh) while active

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        bad = None
        if name in _SYNC_OPS:
            bad = f"{name} (a host read of device data / a data-dependent shape)"
        elif name in _COPY_OPS:
            srcs = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            if name == "aten::_to_copy":
                srcs = [args[0]]
            if any(self._fresh.get(id(t)) is t for t in srcs):
                bad = f"{name} from a host-made value (on CUDA: a pageable host->device copy)"
        if bad is not None:
            where = _offload_caller()
            if where is not None:
                self.violations.append((bad, where))
                if self.strict:
                    raise CaptureError(f"{bad} at {where}: illegal during CUDA-graph capture")
        out = func(*args, **kwargs)
        if name == "aten::lift_fresh" and isinstance(out, torch.Tensor):
            self._fresh[id(out)] = out
        return out
