"""Accuracy metrics (pure torch; tests/test_eval_metrics.py checks them on known answers).

Shapes: ``N`` rows (decode steps), ``Hq`` query heads, ``NBLK`` blocks, ``V`` vocabulary.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["mass_recall", "block_recall", "kl_and_agreement", "perplexity", "passkey_prompt",
           "passkey_found", "lead_ids", "Accumulator", "unpack_signs", "near_constant_bits",
           "code_similarity_pearson", "CONST_BIT_SHARE"]


def mass_recall(mass: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Attention-mass recall per row: the dense softmax mass inside the selected
    blocks, averaged over heads. ``mass float [N, Hq, NBLK]`` (each head's blocks
    sum to 1), ``selected bool [N, NBLK]`` -> ``float [N]`` in [0, 1]."""
    return (mass * selected.unsqueeze(1)).sum(dim=2).mean(dim=1)


def block_recall(selected: torch.Tensor, oracle: torch.Tensor, forced: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fraction of the oracle's blocks that ``selected`` also picked, per row,
    ``bool [N, NBLK]`` each -> ``float [N]``. ``forced`` blocks (picked by both by
    rule) are left out so they do not inflate the score; a row whose oracle has
    no free pick scores 1."""
    if forced is not None:
        nblk = selected.shape[1]
        f = forced[:, :nblk] if forced.shape[1] >= nblk else torch.nn.functional.pad(forced, (0, nblk - forced.shape[1]))
        selected, oracle = selected & ~f, oracle & ~f
    hit = (selected & oracle).sum(dim=1).double()
    tot = oracle.sum(dim=1).double()
    return torch.where(tot > 0, hit / tot.clamp(min=1), torch.ones_like(tot))


def kl_and_agreement(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> Dict[str, float]:
    """Teacher-forced comparison over ``N`` positions, logits ``[N, V]`` each:
    ``kl`` = mean over positions of KL(dense || sparse) in nats; ``agreement`` =
    fraction of positions with the same argmax."""
    ld = torch.log_softmax(dense_logits.float(), dim=-1)
    ls = torch.log_softmax(sparse_logits.float(), dim=-1)
    kl = (ld.exp() * (ld - ls)).sum(dim=-1)
    agree = (dense_logits.argmax(dim=-1) == sparse_logits.argmax(dim=-1)).double()
    return {"kl": float(kl.mean()), "agreement": float(agree.mean()), "n": int(kl.shape[0])}


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``exp(mean NLL)`` of ``targets int [N]`` under ``logits [N, V]`` (position ``i``
    predicts ``targets[i]``)."""
    nll = torch.nn.functional.cross_entropy(logits.float(), targets.long(), reduction="mean")
    return float(torch.exp(nll))


def unpack_signs(codes: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., C]`` -> ``float32 [..., 8C]`` of +-1 (bit ``i`` of byte ``j`` -> entry ``8j+i``)."""
    bits = (codes.unsqueeze(-1).to(torch.int32) >> torch.arange(8, device=codes.device)) & 1
    return bits.reshape(*codes.shape[:-1], codes.shape[-1] * 8).to(torch.float32) * 2 - 1


#: a code bit is "near-constant" when one value holds on more than this share of the keys
CONST_BIT_SHARE = 0.9


def near_constant_bits(k_codes: torch.Tensor) -> torch.Tensor:
    """Share of code bits that are near-constant over the keys, per KV head:
    ``k_codes uint8 [S, Hkv, C]`` -> ``float [Hkv]``; a bit counts when one value
    holds on more than :data:`CONST_BIT_SHARE` of the ``S`` keys (such a bit
    scores almost every key alike, so it barely ranks them)."""
    ones = (unpack_signs(k_codes) > 0).double().mean(dim=0)  # [Hkv, R]
    return (torch.maximum(ones, 1 - ones) > CONST_BIT_SHARE).double().mean(dim=1)


def code_similarity_pearson(q: torch.Tensor, k: torch.Tensor, q_codes: torch.Tensor, k_codes: torch.Tensor,
                            seq_lens: torch.Tensor) -> torch.Tensor:
    """Pearson correlation, over the keys a query sees, of its code similarity
    ``<sgn c(q), sgn c(k)>`` with its true ``q.k``; per row, mean over query heads.
    ``q [N, Hq, D]``, ``k [S, Hkv, D]``, codes ``uint8 [N, Hq, C]`` / ``[S, Hkv, C]``,
    ``seq_lens int64 [N]`` (row ``i`` sees keys ``< seq_lens[i]``) -> ``float [N]``
    (0 for a row whose similarities or products are constant)."""
    n, hq, d = q.shape
    s, hkv, _ = k.shape
    g = hq // hkv
    sim = torch.einsum("nkgr,skr->nkgs", unpack_signs(q_codes).reshape(n, hkv, g, -1), unpack_signs(k_codes))
    dot = torch.einsum("nkgd,skd->nkgs", q.double().reshape(n, hkv, g, d), k.double())
    valid = (torch.arange(s).unsqueeze(0) < seq_lens.cpu().unsqueeze(1)).to(sim.device)  # [N, S]
    m = valid[:, None, None, :].double()
    cnt = m.sum(dim=-1, keepdim=True)
    x, y = sim.double(), dot
    xc = (x - (x * m).sum(-1, keepdim=True) / cnt) * m
    yc = (y - (y * m).sum(-1, keepdim=True) / cnt) * m
    den = (xc.pow(2).sum(-1) * yc.pow(2).sum(-1)).sqrt()
    r = torch.where(den > 0, (xc * yc).sum(-1) / den.clamp(min=1e-300), torch.zeros_like(den))
    return r.reshape(n, hq).mean(dim=1)


_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
           "There and back again. ")


def passkey_prompt(tok, n_tokens: int, depth: float, passkey: int, chat: bool = False) -> torch.Tensor:
    """A passkey-retrieval prompt of about ``n_tokens`` tokens: filler text with
    ``"The pass key is {passkey}. Remember it."`` at ``depth`` (0..1) of the filler,
    then the question, as plain text (``chat=True`` wraps it in the chat template;
    SmolLM2-135M answers the plain form more reliably), after the tokenizer's BOS
    when it adds one (:func:`lead_ids`). Returns ``int64 [T]`` token ids."""
    ids = _passkey_ids(tok, n_tokens, depth, passkey, chat, 0)
    # re-tokenising decoded filler shifts the count a little: correct once
    return _passkey_ids(tok, n_tokens, depth, passkey, chat, n_tokens - ids.shape[0])


def _passkey_ids(tok, n_tokens, depth, passkey, chat, adjust):
    needle = f" The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    head = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    question = " What is the pass key? The pass key is"
    fill_ids = tok(_FILLER, add_special_tokens=False).input_ids
    fixed = len(tok(head + needle + question, add_special_tokens=False).input_ids) + 40
    n_fill = max(0, n_tokens - fixed + adjust)
    reps = n_fill // len(fill_ids) + 1
    filler = (fill_ids * reps)[:n_fill]
    cut = int(round(depth * len(filler)))
    cut -= cut % len(fill_ids) if len(filler) > len(fill_ids) else 0  # cut on a sentence boundary
    before, after = tok.decode(filler[:cut]), tok.decode(filler[cut:])
    body = head + before + needle + after
    if chat and getattr(tok, "chat_template", None):
        msgs = [{"role": "user", "content": body + "\nWhat is the pass key?"}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + "The pass key is"
        return torch.tensor(tok(text, add_special_tokens=False).input_ids, dtype=torch.long)  # template has its BOS
    else:
        text = body + question
    return torch.tensor(lead_ids(tok) + tok(text, add_special_tokens=False).input_ids, dtype=torch.long)


def lead_ids(tok) -> List[int]:
    """The tokenizer's leading special tokens (its BOS when it adds one), see
    :func:`gsa.eval.load.bos_ids`; prompts built here start with them (a chat
    template writes its own)."""
    from gsa.eval.load import bos_ids
    return bos_ids(tok)


def passkey_found(answer: str, passkey: int) -> bool:
    """Whether the generated ``answer`` contains the pass key's digits (first number in it)."""
    import re
    m = re.search(r"\d+", answer.replace(",", ""))
    return m is not None and m.group(0) == str(passkey)


class Accumulator:
    """Running means keyed by name, per layer and overall."""

    def __init__(self):
        self.sum: Dict[str, Dict[int, float]] = {}
        self.cnt: Dict[str, Dict[int, int]] = {}

    def add(self, name: str, layer: int, values: torch.Tensor) -> None:
        self.sum.setdefault(name, {}).setdefault(layer, 0.0)
        self.cnt.setdefault(name, {}).setdefault(layer, 0)
        self.sum[name][layer] += float(values.double().sum())
        self.cnt[name][layer] += int(values.numel())

    def per_layer(self, name: str) -> Dict[int, float]:
        return {l: self.sum[name][l] / self.cnt[name][l] for l in sorted(self.sum.get(name, {}))}

    def overall(self, name: str) -> float:
        s = sum(self.sum.get(name, {}).values())
        c = sum(self.cnt.get(name, {}).values())
        return s / c if c else float("nan")

    def names(self) -> List[str]:
        return sorted(self.sum)
