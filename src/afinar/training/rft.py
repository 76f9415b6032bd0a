"""Reinforcement fine-tuning with a grader (GRPO), inside afinar's training loop.

Data: prompt records (data/prompts.py: chat, instruction or prompt records); every other
field of a record is the *item* the grader reads (`{{item.reference_answer}}`). A record with
its own answer (supervised data) gives that answer as the prompt's `reference_answer`, which is
never trained on: the grader alone teaches.

A step takes `batch_size` prompts, samples `samples_per_prompt` answers for each from the model
being trained (the serving engine's continuous batching, with the sampled token ids kept),
grades them, and turns the rewards into advantages relative to the other samples of the same
prompt ((r - mean) / (std + 1e-4); a prompt whose samples all score the same teaches nothing).
The loss is -advantage x the answer's token log-probabilities, averaged over the batch's answer
tokens (GRPO with one update per batch, so the policy ratio is 1 and needs no clipping — the
setting TRL's GRPOTrainer defaults to); with kl_coef > 0, kl_coef x the k3 estimate of the KL
to the starting model is added per token (LoRA only: the reference is the adapter disabled).
Metrics per step: mean reward, reward spread within prompts, the best sample's reward (mean
over prompts: low when the samples are seldom right), KL to the start (LoRA), mean answer
length, the share of answers cut at max_new_tokens. Validation: greedy answers to the
validation prompts, their mean reward.
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
                    max_new_tokens: int, role: str = "training") -> PreparedData:
    """Read and check prompt records (and that the grader finds what it reads in each, and
    that each reference answer fits in max_new_tokens: a sample that matches a longer one is
    cut and graded as wrong, which teaches the policy to leave things out)."""
    from afinar.data.prompts import read_prompts
    from afinar.data.schema import serialize_value
    from afinar.data.tokenize import render_prompt
    from afinar.data.tools import assistant_text
    from afinar.eval.graders import GraderError

    read, records, issues = read_prompts(path)
    out = PreparedData(path, "prompts", [], len(read.records))
    too_long: list[Issue] = []
    longest = 0
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
        if item.get("reference_answer") is not None:
            n = len(tokenizer(serialize_value(item["reference_answer"]),
                              add_special_tokens=False)["input_ids"]) + 1  # + end of turn
            if n > max_new_tokens:
                longest = max(longest, n)
                too_long.append(Issue(
                    f"the reference answer is {n} tokens with its end of turn, over "
                    f"max_new_tokens={max_new_tokens}: a sample that matches it is cut and "
                    f"graded as wrong", r.line, "reference_answer", path, "answer_too_long",
                    read.unit))
        out.encoded.append(Prompt(ids, item, r.line))
    if too_long and not issues:
        raise DataError(f"{path}: {len(too_long)} of {len(records)} {role} prompts have a "
                        f"reference answer longer than max_new_tokens={max_new_tokens}; "
                        f"nothing was trained", too_long,
                        hint=f"raise max_new_tokens to at least {longest} (Bedrock: "
                             f"inferenceMaxTokens), or shorten those reference answers")
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


class _Served(torch.nn.Module):
    """The policy as the serving engine runs it: under the training's autocast."""

    def __init__(self, model: torch.nn.Module, autocast):
        super().__init__()
        self.inner, self.autocast = model, autocast
        self.config, self.generation_config = model.config, model.generation_config

    def forward(self, **kw):
        with self.autocast():
            return self.inner(**kw)


class Sampler:
    """Answers sampled from the policy being trained by the serving engine (continuous
    batching: a row leaves the batch when its answer ends; inference/engine.py). The policy
    module is served as it is, so every step samples from the current weights; each sampled
    answer keeps its token ids (end of turn included) for the update.

    Against transformers' batched `generate` (static batches: every row runs until the
    longest answer ends): benchmarks/rft_sampling.py."""

    MODEL = "policy"

    def __init__(self, model: torch.nn.Module, tokenizer, settings, rows: int,
                 max_new_tokens: int, max_prompt_tokens: int, autocast, seed: int):
        from afinar.inference.engine import Engine

        self.model, self.seed, self.calls = model, seed, 0
        # Threadless: the sampling runs on the training's thread (with the engine's own thread
        # beside it, a first sampling pass was measured 3.6x slower than the next: two OpenMP
        # teams). One prefill pass for all rows: nobody else waits on this engine, and 8 chunks
        # of a 64-row prefill took 27.8 s against 7.4 s in one pass on a LoRA policy.
        self.engine = Engine(settings, max_batch=max(1, min(rows, 256)), max_queue=1 << 30,
                             max_prompt_tokens=max_prompt_tokens,
                             max_output_tokens=max_new_tokens, prefill_chunk=1 << 30,
                             background=False)
        self.engine.serve_module(self.MODEL, _Served(model, autocast), tokenizer)

    def sample(self, prompts: list[Prompt], n: int, max_new_tokens: int,
               temperature: float) -> tuple[list[list[int]], list[list[int]], int]:
        """n answers per prompt (greedy when temperature is 0): (prompt ids, answer ids) per
        sample, prompt by prompt, and how many answers were cut at max_new_tokens. Seeded per
        answer: a run with the same seed samples the same answers."""
        from afinar.inference.requests import GenRequest

        was = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            reqs = []
            for p in prompts:
                for _ in range(n):
                    self.calls += 1
                    reqs.append(self.engine.submit(GenRequest(
                        model=self.MODEL, prompt_ids=list(p.ids), max_tokens=max_new_tokens,
                        temperature=temperature,
                        seed=self.seed * 1_000_003 + self.calls if temperature > 0 else None)))
            self.engine.run_pending()
            done = [r.result(timeout=0) for r in reqs]
        finally:
            self.model.train(was)
        cut = sum(r.stop_reason == "max_tokens" for r in done)
        return [p.ids for p in prompts for _ in range(n)], [r.output_ids for r in done], cut

    def close(self) -> None:
        self.engine.close()


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
