"""A training script written for SageMaker's Hugging Face estimator (the course's kind): it
reads the `train` channel (JSONL of {"prompt", "completion"}), fine-tunes `model_name` with
transformers' Trainer, and saves the model to SM_MODEL_DIR. It knows nothing of afinar;
`afinar.sdk.HuggingFace(...).fit()` runs it under the same contract.

    python train.py --epochs 1 --train_batch_size 8 --model_name <hub id or folder>
"""

import argparse
import json
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=float, default=1)
p.add_argument("--train_batch_size", type=int, default=8)
p.add_argument("--learning_rate", type=float, default=5e-5)
p.add_argument("--max_steps", type=int, default=-1)
p.add_argument("--model_name", default="HuggingFaceTB/SmolLM2-135M-Instruct")
p.add_argument("--model_dir", default=os.environ.get("SM_MODEL_DIR", "model"))
p.add_argument("--training_dir", default=os.environ.get("SM_CHANNEL_TRAIN", "data"))
args = p.parse_args()

tok = AutoTokenizer.from_pretrained(args.model_name)
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(args.model_name, torch_dtype=torch.float32)
files = sorted(os.path.join(args.training_dir, f) for f in os.listdir(args.training_dir))
records = [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]


def encode(r, n=256):
    prompt = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                     tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(r["completion"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (p_ids + a_ids)[:n]
    labels = ([-100] * len(p_ids) + a_ids)[:n]
    pad = n - len(ids)
    return {"input_ids": ids + [tok.pad_token_id] * pad, "labels": labels + [-100] * pad,
            "attention_mask": [1] * len(ids) + [0] * pad}


train = [encode(r) for r in records]
trainer = Trainer(model=model, train_dataset=train, data_collator=default_data_collator,
                  args=TrainingArguments(output_dir="/tmp/trainer", report_to=[],
                                         num_train_epochs=args.epochs,
                                         max_steps=args.max_steps,
                                         per_device_train_batch_size=args.train_batch_size,
                                         learning_rate=args.learning_rate, logging_steps=5,
                                         save_strategy="no", use_cpu=not torch.cuda.is_available()))
result = trainer.train()
print(f"train loss {result.training_loss:.4f}", flush=True)
trainer.save_model(args.model_dir)
tok.save_pretrained(args.model_dir)
