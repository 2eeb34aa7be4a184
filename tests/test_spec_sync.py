"""docs/spec.md and the code must agree on what exists and which version rules."""
import re
from pathlib import Path

import gsa
from gsa import dispatch, reference

SPEC = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text()


def test_spec_version_matches_package():
    m = re.search(r"spec version (\d+\.\d+)", SPEC)
    assert m and m.group(1) == gsa.SPEC_VERSION


def test_every_op_is_in_the_spec_and_the_reference():
    for op in dispatch.OP_NAMES:
        assert callable(getattr(reference, op)), op
        base = op.replace("mla_", "").replace("_and_cache", "")
        assert base in SPEC or op in SPEC, f"{op} is not described in docs/spec.md"


def test_score_scale_is_the_documented_one():
    assert reference.SCORE_SCALE == 16 and "1/16" in SPEC
