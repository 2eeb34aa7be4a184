"""RULER-style synthetic retrieval tasks that need more than one retrieval
(docs/accuracy.md, "Multi-retrieval tasks"), beside passkey (:mod:`gsa.eval.metrics`).

* ``multikey`` (RULER's multi-key needle): ``n_keys`` needles "One of the special
  magic numbers for <word> is: <7 digits>." hidden in filler; the question asks for
  one word's number. The queried needle sits at ``depth``; the distractors at
  seeded random depths. Score 1 when the first number of the answer is the
  queried one (a distractor's number scores 0).
* ``vartrack`` (RULER's variable tracking): a chain ``VAR A = 12345``, ``VAR B =
  VAR A``, ... of ``hops`` assignments, the first at ``depth`` and the rest spread
  evenly up to the end of the filler, plus ``n_distractor_chains`` chains of
  another value; the question asks for every variable holding the value. Score =
  share of the chain's variable names found in the answer (RULER's
  ``string_match_all``); a distractor chain's name in the answer does not count.

Each generator returns a :class:`TaskPrompt`: token ids (after the tokenizer's BOS
when it adds one), the expected answer, and what was hidden where (character
offsets into the decoded prompt, for the tests). :func:`score` scores an answer.
"""
from __future__ import annotations

import random
import re
import string
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import torch

from gsa.eval.metrics import _FILLER, lead_ids

__all__ = ["TaskPrompt", "TASKS", "make_prompt", "score", "multikey_prompt", "vartrack_prompt", "max_new_tokens"]

_WORDS = ("apple", "river", "candle", "violet", "marble", "falcon", "harbor", "pepper", "silver", "meadow",
          "lantern", "copper", "willow", "saddle", "ember", "thistle", "orchard", "glacier", "cobalt", "juniper")


class TaskPrompt(NamedTuple):
    ids: torch.Tensor  #: int64 [T] prompt token ids
    expected: Any  #: multikey: the queried number (int); vartrack: the chain's variable names (list of str)
    needles: List[Tuple[float, str]]  #: (depth in the filler, inserted sentence), in prompt order
    info: Dict[str, Any]  #: task details (queried key, distractor values, ...)


def _fill_with(tok, n_tokens: int, fixed_text: str, inserts: Sequence[Tuple[float, str]], adjust: int) -> str:
    """Filler of about ``n_tokens`` minus ``fixed_text``'s tokens, with each insert's
    sentence placed at its depth (0..1 of the filler), cut on filler-sentence boundaries."""
    fill_ids = tok(_FILLER, add_special_tokens=False).input_ids
    fixed = len(tok(fixed_text + "".join(s for _, s in inserts), add_special_tokens=False).input_ids) + 40
    n_fill = max(0, n_tokens - fixed + adjust)
    filler = (fill_ids * (n_fill // len(fill_ids) + 1))[:n_fill]
    period = len(fill_ids) if len(filler) > len(fill_ids) else 1
    out, prev = [], 0
    for depth, sentence in sorted(inserts, key=lambda x: x[0]):
        cut = int(round(depth * len(filler)))
        cut = max(prev, cut - cut % period)
        out.append(tok.decode(filler[prev:cut]))
        out.append(sentence)
        prev = cut
    out.append(tok.decode(filler[prev:]))
    return "".join(out)


def _build(tok, n_tokens: int, head: str, question: str, inserts) -> torch.Tensor:
    def ids_for(adjust):
        body = _fill_with(tok, n_tokens, head + question, inserts, adjust)
        return lead_ids(tok) + tok(head + body + question, add_special_tokens=False).input_ids
    first = ids_for(0)
    return torch.tensor(ids_for(n_tokens - len(first)), dtype=torch.long)  # re-tokenising shifts the count: once


def multikey_prompt(tok, n_tokens: int, depth: float, rng: random.Random, n_keys: int = 4) -> TaskPrompt:
    """The multi-key needle task (module docstring); ``rng`` draws words, numbers and
    distractor depths."""
    words = rng.sample(_WORDS, n_keys)
    values = rng.sample(range(1_000_000, 10_000_000), n_keys)
    needles = [(depth, words[0], values[0])] + [(rng.random(), w, v) for w, v in zip(words[1:], values[1:])]
    inserts = [(d, f" One of the special magic numbers for {w} is: {v}. ") for d, w, v in needles]
    head = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
            "I will quiz you about the numbers afterwards.\n")
    question = (f"\nWhat is the special magic number for {words[0]} mentioned in the provided text? "
                f"The special magic number for {words[0]} mentioned in the provided text is")
    ids = _build(tok, n_tokens, head, question, inserts)
    return TaskPrompt(ids, values[0], sorted(inserts, key=lambda x: x[0]),
                      {"key": words[0], "distractors": dict(zip(words[1:], values[1:]))})


def _var_names(rng: random.Random, n: int) -> List[str]:
    names = set()
    while len(names) < n:
        names.add("".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    # sorted first: a set's order follows str hashing, which differs between processes
    return sorted(sorted(names), key=lambda _: rng.random())


def vartrack_prompt(tok, n_tokens: int, depth: float, rng: random.Random, hops: int = 4,
                    n_distractor_chains: int = 1) -> TaskPrompt:
    """The variable-tracking task (module docstring)."""
    n_chains = 1 + n_distractor_chains
    names = _var_names(rng, hops * n_chains)
    values = rng.sample(range(10000, 100000), n_chains)
    inserts = []
    for c in range(n_chains):
        chain = names[c * hops:(c + 1) * hops]
        d0 = depth if c == 0 else rng.random() * 0.5
        for i, name in enumerate(chain):
            d = d0 + (1 - d0) * i / hops
            rhs = str(values[c]) if i == 0 else f"VAR {chain[i - 1]}"
            inserts.append((d, f" VAR {name} = {rhs}. "))
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    question = (f"\n\nQuestion: Find all variables that are assigned the value {values[0]} in the text above. "
                f"Answer: According to the chain(s) of variable assignment in the text above, {hops} variables "
                f"are assigned the value {values[0]}, they are:")
    ids = _build(tok, n_tokens, head, question, inserts)
    return TaskPrompt(ids, names[:hops], sorted(inserts, key=lambda x: x[0]),
                      {"value": values[0], "distractor_names": names[hops:], "distractor_values": values[1:]})


def score(task: str, answer: str, expected: Any) -> float:
    """Score a generated ``answer`` (text): ``multikey`` / ``passkey``: 1.0 when its first
    number equals ``expected``, else 0.0; ``vartrack``: the share of the ``expected``
    names that appear in it as whole words."""
    if task in ("multikey", "passkey"):
        m = re.search(r"\d+", answer.replace(",", ""))
        return float(m is not None and m.group(0) == str(expected))
    if task == "vartrack":
        found = set(re.findall(r"\b[A-Z]{5}\b", answer))
        return sum(name in found for name in expected) / len(expected)
    raise ValueError(f"score: 'task' must be one of {sorted(TASKS)} or 'passkey', got {task!r}")


TASKS = {"multikey": multikey_prompt, "vartrack": vartrack_prompt}


def make_prompt(task: str, tok, n_tokens: int, depth: float, rng: random.Random) -> TaskPrompt:
    """One prompt of ``task`` (``"multikey"`` or ``"vartrack"``)."""
    if task not in TASKS:
        raise ValueError(f"make_prompt: 'task' must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task](tok, n_tokens, depth, rng)


def max_new_tokens(task: str) -> int:
    """Greedy tokens to generate for an answer (a 7-digit number; four 5-letter names)."""
    return {"multikey": 12, "vartrack": 32}[task]
