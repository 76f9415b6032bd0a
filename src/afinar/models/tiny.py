"""Tiny random models built in code (2 layers, small hidden size) with a real tokenizer, for
tests and smoke runs. Never downloads."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path, *, hidden_size: int = 64,
                    num_layers: int = 2, num_heads: int = 4, intermediate_size: int | None = None,
                    seed: int = 0, max_position_embeddings: int = 512,
                    num_kv_heads: int | None = None) -> Path:
    """Write a randomly initialised llama-architecture model + the given tokenizer to out_dir."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or hidden_size * 2,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def make_tiny_encoder(out_dir: str | Path, tokenizer_dir: str | Path, *, hidden_size: int = 64,
                      num_layers: int = 2, num_heads: int = 4, seed: int = 0) -> Path:
    """A randomly initialised BERT-architecture encoder + the given (WordPiece) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     intermediate_size=hidden_size * 2, max_position_embeddings=512,
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
