"""Debug mode (full range checks on accelerator tensors): GSA_DEBUG is read at import and by
set_debug(None), set_debug(True/False) overrides it, and the hot path's device-known decision
(gsa.hotpath.range_checks_known) follows it."""
import torch

from gsa import set_debug
from gsa import validate as V
from gsa.hotpath import range_checks, range_checks_known


def test_set_debug_none_rereads_gsa_debug(monkeypatch):
    try:
        monkeypatch.setenv("GSA_DEBUG", "1")
        set_debug(None)
        assert V.debug_enabled()
        monkeypatch.setenv("GSA_DEBUG", "0")
        assert V.debug_enabled()  # the environment is read at set_debug(None), not per check
        set_debug(None)
        assert not V.debug_enabled()
        for off in ("", "false", "False"):
            monkeypatch.setenv("GSA_DEBUG", off)
            set_debug(None)
            assert not V.debug_enabled()
        set_debug(True)
        assert V.debug_enabled()
        monkeypatch.setenv("GSA_DEBUG", "1")
        set_debug(False)
        assert not V.debug_enabled()
    finally:
        monkeypatch.delenv("GSA_DEBUG", raising=False)
        set_debug(None)
    assert not V.debug_enabled()


def test_range_checks_known_follows_debug_mode():
    t = torch.zeros(3, dtype=torch.int32)
    try:
        set_debug(False)
        assert range_checks_known(True, t) and range_checks(t)  # CPU tensors: always checked
        assert not range_checks_known(False, t)  # an accelerator signature without debug mode
        set_debug(True)
        assert range_checks_known(False, t)  # debug mode: checked (the tensors decide the rest)
        assert not range_checks_known(False, torch.zeros(3, device="meta"))  # no values to read
    finally:
        set_debug(None)
