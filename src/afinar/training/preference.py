"""Preference tuning (DPO and relatives) inside afinar's training loop.

Each pair is the prompt + preferred answer and the prompt + non-preferred answer, encoded with
the model's chat template; only the final answer's tokens count (earlier assistant turns of the
prompt are context). A batch of B pairs is one forward over 2B rows (preferred rows first), and
each row's log-probability is the sum over its answer tokens, computed with the output layer
applied to those tokens only (as SelectiveLMLoss does).

The reference model's log-probabilities are computed once, before the first step, with the
untouched model (for LoRA the model at initialisation *is* the reference: the adapter starts
at zero), and kept with the pairs: no second model in memory and no reference forward per step
(TRL's `precompute_ref_log_probs`). Losses (the formulas TRL's DPOTrainer uses):
- dpo:   -log sigmoid(beta * ((pc - rc) - (pr - rr)))   (Rafailov et al.; TRL "sigmoid")
- ipo:   ((pc - rc)/|c| - (pr - rr)/|r| - 1/(2 beta))^2, per-token averages (TRL's IPO)
- hinge: relu(1 - beta * ((pc - rc) - (pr - rr)))       (SLiC)
- orpo:  NLL of the preferred answer - beta * log sigmoid(log odds(c) - log odds(r)), with
         length-averaged log-probabilities; no reference (Hong et al.).
With sft_weight w (dpo/ipo/hinge), w x the preferred answer's per-token NLL is added (RPO, TRL's
rpo_alpha): DPO alone can lower both answers' likelihood while their gap grows, and the model's
generations then degrade (measured on the Stripe task: benchmarks/README.md).
Rewards (beta x log-ratio; ORPO: beta x the mean log-probability) give the reported margin and
accuracy (the share of pairs whose preferred answer gets the higher reward).

Written in afinar's loop rather than on TRL's DPOTrainer so that preference runs share the
loop's checkpoints, exact resume, STOP, hold-out, best-weights, metrics layout and export; its
speed against DPOTrainer on the same pairs is measured in benchmarks/dpo_throughput.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from afinar.data.schema import PREFERENCE, Example
from afinar.data.tokenize import IGNORE_INDEX, Encoded, encode_example
from afinar.training.data import PreparedData, finish, read_checked
from afinar.training.loss import _causal_lm

REFERENCE_FREE = {"orpo"}


@dataclass
class Pair:
    chosen: Encoded
    rejected: Encoded
    line: int
    ref: tuple[float, float] | None = None  # the reference's log-probs of (chosen, rejected)

    def __len__(self) -> int:  # tokens a step spends on the pair
        return len(self.chosen) + len(self.rejected)


def _encode_side(tokenizer, ex: Example, messages: list[dict], k: int, max_length: int
                 ) -> Encoded:
    """The conversation with only the answer (messages[k:]) labelled."""
    msgs = [dict(m, weight=0) if i < k and m["role"] == "assistant" else m
            for i, m in enumerate(messages)]
    return encode_example(tokenizer, dataclasses.replace(ex, messages=msgs), max_length)


def prepare_pairs(path: str, tokenizer, max_length: int, skip_invalid: bool = False,
                  role: str = "training") -> PreparedData:
    """Read, check and encode preference data: PreparedData whose `encoded` are Pairs."""
    read, norm = read_checked(
        path, PREFERENCE, skip_invalid, role,
        lambda _: "preference tuning needs pairs: {\"input\", \"preferred_output\", "
                  "\"non_preferred_output\"} or {\"prompt\", \"chosen\", \"rejected\"}; for "
                  "labelled answers use --type sft")
    out = PreparedData(path, norm.schema, [], len(read.records),
                       skipped_invalid=len(norm.issues))
    for ex in norm.examples:
        k = len(ex.prompt_messages())
        good = _encode_side(tokenizer, ex, ex.messages, k, max_length)
        bad = _encode_side(tokenizer, ex, ex.rejected, k, max_length)
        if good.truncated or bad.truncated:
            out.truncated += 1
        if any(all(t == IGNORE_INDEX for t in e.labels[1:]) for e in (good, bad)):
            out.dropped_no_target += 1
            continue
        out.encoded.append(Pair(good, bad, ex.line))
    return finish(out, role, max_length, unit="pair")


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict:
    """2B right-padded rows (the preferred answers, then the non-preferred ones) and the
    reference log-probs in the same order (None before they are computed)."""
    from afinar.training.batching import collate

    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if all(p.ref is not None for p in pairs):
        b["ref_logps"] = torch.tensor([p.ref[0] for p in pairs] + [p.ref[1] for p in pairs],
                                      dtype=torch.float32)
    return b


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens, and their count."""
    lm = _causal_lm(model)
    y = labels[:, 1:]
    sel = y != IGNORE_INDEX
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[:, :-1][sel]).float()  # (N, V)
    tok = torch.gather(logits.log_softmax(-1), 1, y[sel].unsqueeze(1)).squeeze(1)
    rows = torch.arange(y.size(0), device=y.device).unsqueeze(1).expand_as(y)[sel]
    logps = torch.zeros(y.size(0), device=y.device, dtype=tok.dtype).index_add(0, rows, tok)
    return logps, sel.sum(1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (as TRL's ORPO computes it)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


class PreferenceLoss(nn.Module):
    """Wraps a (PEFT) causal LM; forward returns (summed loss, pairs, pairs ranked right,
    summed reward margin)."""

    def __init__(self, model: nn.Module, loss: str = "dpo", beta: float = 0.1,
                 sft_weight: float = 0.0):
        super().__init__()
        self.model, self.loss, self.beta, self.sft_weight = model, loss, beta, sft_weight

    def forward(self, input_ids, labels, attention_mask=None, ref_logps=None):
        logps, n_tok = sequence_logps(self.model, input_ids, labels, attention_mask)
        b = logps.size(0) // 2
        pc, pr = logps[:b], logps[b:]
        nc, nr = n_tok[:b].clamp(min=1), n_tok[b:].clamp(min=1)
        beta = self.beta
        if self.loss == "orpo":
            mc, mr = pc / nc, pr / nr  # mean log-probs; log odds = log p - log(1 - p)
            log_odds = (mc - mr) - (_log1mexp(mc) - _log1mexp(mr))
            losses = -mc - beta * F.logsigmoid(log_odds)
            rc, rr = beta * mc.detach(), beta * mr.detach()
        else:
            if ref_logps is None:
                raise RuntimeError("the reference log-probs were not computed")
            ref = ref_logps.to(logps.device)
            lc, lr = pc - ref[:b], pr - ref[b:]
            if self.loss == "dpo":
                losses = -F.logsigmoid(beta * (lc - lr))
            elif self.loss == "hinge":
                losses = torch.relu(1 - beta * (lc - lr))
            elif self.loss == "ipo":
                losses = (lc / nc - lr / nr - 1 / (2 * beta)) ** 2
            else:
                raise ValueError(self.loss)
            rc, rr = beta * lc.detach(), beta * lr.detach()
            if self.sft_weight:
                losses = losses - self.sft_weight * pc / nc
        return losses.sum(), torch.tensor(b), (rc > rr).sum(), (rc - rr).sum()


@torch.no_grad()
def compute_reference(model: nn.Module, data: PreparedData, pad_id: int, batch_size: int,
                      device, autocast, progress=None) -> None:
    """Store the model's log-probs of each pair's two answers on the pairs (`Pair.ref`)."""
    was_training = model.training
    model.eval()
    pairs = data.encoded
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    for s in range(0, len(order), batch_size):
        chunk = [pairs[i] for i in order[s:s + batch_size]]
        b = collate_pairs(chunk, pad_id)
        with autocast():
            lp, _ = sequence_logps(model, b["input_ids"].to(device), b["labels"].to(device),
                                   None if b["attention_mask"] is None else
                                   b["attention_mask"].to(device))
        lp = lp.float().cpu().tolist()
        for j, p in enumerate(chunk):
            p.ref = (lp[j], lp[len(chunk) + j])
        if progress:
            progress(min(s + batch_size, len(order)), len(order))
    model.train(was_training)
