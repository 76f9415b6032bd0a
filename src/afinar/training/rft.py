"""Reinforcement fine-tuning with a grader (GRPO), inside afinar's training loop.

Data: prompt records (data/prompts.py: chat, instruction or prompt records); every other
field of a record is the *item* the grader reads (`{{item.reference_answer}}`). A record with
its own answer (supervised data) gives that answer as the prompt's `reference_answer`, which is
never trained on: the grader alone teaches.

A step takes `batch_size` prompts, samples `samples_per_prompt` answers for each from the model
being trained (transformers' batched `generate`, with the sampled token ids kept), grades them,
and turns the rewards into advantages relative to the other samples of the same prompt
((r - mean) / (std + 1e-4); a prompt whose samples all score the same teaches nothing).
The loss is -advantage x the answer's token log-probabilities, averaged over the batch's answer
tokens (GRPO with one update per batch, so the policy ratio is 1 and needs no clipping — the
setting TRL's GRPOTrainer defaults to); with kl_coef > 0, kl_coef x the k3 estimate of the KL
to the starting model is added per token (LoRA only: the reference is the adapter disabled).
Metrics per step: mean reward, reward spread within prompts, KL to the start (LoRA), mean
answer length. Validation: greedy answers to the validation prompts, their mean reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afinar.data.prompts import FORMS
from afinar.errors import DataError, Issue
from afinar.training.data import PreparedData


@dataclass
class Prompt:
    ids: list[int]  # the rendered prompt, generation prompt included
    item: dict  # the reference data the grader reads
    line: int

    def __len__(self) -> int:
        return len(self.ids)


def prepare_prompts(path: str, tokenizer, max_prompt_length: int, grader,
                    role: str = "training") -> PreparedData:
    """Read and check prompt records (and that the grader finds what it reads in each)."""
    from afinar.data.prompts import read_prompts
    from afinar.data.tokenize import render_prompt
    from afinar.data.tools import assistant_text
    from afinar.eval.graders import GraderError

    read, records, issues = read_prompts(path)
    out = PreparedData(path, "prompts", [], len(read.records))
    for r in records:
        item, msgs = dict(r.item), r.messages
        if r.answer is not None:
            item.setdefault("reference_answer", assistant_text(r.answer))
        try:
            grader.check(item)
        except GraderError as e:
            issues.append(Issue(e.message, r.line, None, path, "grader_field", read.unit))
            continue
        ids = tokenizer(render_prompt(tokenizer, msgs, r.tools),
                        add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            out.truncated += 1  # kept whole: cutting a prompt changes the question
            issues.append(Issue(f"the prompt is {len(ids)} tokens, over max_prompt_length="
                                f"{max_prompt_length}", r.line, "messages", path, "too_long",
                                read.unit))
            continue
        out.encoded.append(Prompt(ids, item, r.line))
    if issues:
        raise DataError(f"{path}: {len(issues)} problem(s) in the {role} prompts; nothing was "
                        f"trained", issues,
                        hint=f"reinforcement fine-tuning takes prompt records: {FORMS}, "
                             f"plus the fields the grader reads (e.g. \"reference_answer\")")
    if not out.encoded:
        raise DataError(f"{path}: no {role} prompts")
    return out


class Policy(torch.nn.Module):
    """Holds the model being trained (what the loop prepares, saves and unwraps)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


@torch.no_grad()
def sample(model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int,
           temperature: float, device) -> tuple[list[list[int]], list[list[int]]]:
    """n sampled answers per prompt (greedy when temperature is 0): (prompt ids, answer ids)
    per sample, prompt by prompt; an answer ends at (and keeps) its end-of-turn token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    eos = [i for i in {tokenizer.eos_token_id,
                       getattr(getattr(model, "generation_config", None), "eos_token_id", None)}
           if isinstance(i, int)]
    from afinar.training.batching import left_pad

    rows = [p.ids for p in prompts for _ in range(n)]
    ids, mask = left_pad(rows, pad)
    width = ids.shape[1]
    kw = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens,
          "pad_token_id": pad, "eos_token_id": eos or None, "use_cache": True}
    kw.update({"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else
              {"temperature": None, "top_p": None, "top_k": None})
    was = model.training
    model.eval()
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
    model.train(was)
    answers = []
    for row in out[:, width:].tolist():  # after its end of turn a row holds only padding
        ans = []
        for t in row:
            ans.append(t)
            if t in eos:
                break
        answers.append(ans)
    return rows, answers


def answer_logps(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each answer given its prompt: (rows, T) and a 0/1 mask."""
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    lab = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
        lab[i, len(p):len(s)] = True
    ids, att, lab = ids.to(device), att.to(device), lab.to(device)
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
    tok = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return tok, lab[:, 1:].float()


def advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """(r - mean) / (std + 1e-4) within each prompt's n samples."""
    g = rewards.view(-1, n)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-4)
            ).view(-1)
