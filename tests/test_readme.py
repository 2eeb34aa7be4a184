"""The README's Python example runs as written."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_python_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    env = {}
    exec(compile(code, "README.md", "exec"), env)
    n_sel, lens = env["n_sel"], env["sparse_lens"]
    assert n_sel.tolist() == [3, 3]
    # row 0: 100 tokens in 7 blocks of 16 (last holds 4); row 1: 57 tokens (last holds 9)
    assert 0 < lens[0] <= 100 and 0 < lens[1] <= 57
