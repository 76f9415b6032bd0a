"""Training from scratch: a randomly initialised llama-architecture model of a named size, with
the base model's tokenizer or a byte-level BPE tokenizer trained on the corpus (the
`tokenizers` library). It then trains like continued pre-training (same corpus handling,
held-out perplexity curve); the initial model is written to `<run>/init/` first.
"""

from __future__ import annotations

from pathlib import Path

from afinar.errors import ConfigError

SIZES = {
    # name: (hidden, layers, heads, intermediate)
    "tiny": (128, 4, 4, 384),
    "small": (512, 8, 8, 1536),
    "medium": (768, 12, 12, 2304),
}


def train_bpe_tokenizer(corpus: str, vocab_size: int, out_dir: Path):
    """A byte-level BPE tokenizer trained on the corpus' documents, with <|endoftext|> as
    BOS/EOS/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from afinar.data.corpus import iter_documents
    from afinar.errors import DataError

    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    issues: list = []
    tok.train_from_iterator((text for _, text in iter_documents(corpus, issues)), trainer)
    if issues:
        raise DataError(f"{corpus}: {len(issues)} problem(s) in the corpus", issues)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special,
                                   pad_token=special, unk_token=special)
    fast.save_pretrained(str(out_dir))
    return fast


def build_initial_model(cfg, tokenizer, out_dir: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.scratch_size not in SIZES:
        raise ConfigError(f"unknown scratch_size '{cfg.scratch_size}'",
                          hint=f"choose one of {', '.join(SIZES)}")
    hidden, layers, heads, inter = SIZES[cfg.scratch_size]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=inter,
        max_position_embeddings=max(cfg.max_length, 512), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
