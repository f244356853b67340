#!/usr/bin/env python3
"""Writes the Hugging Face GPT-2 fixture of `ImportTests`: a small randomly initialised
`GPT2LMHeadModel` saved by transformers in float32, float16 and bfloat16, and the logits
transformers computes for fixed token ids with each (in float32, from the saved weights).
CI needs none of this: the outputs are committed.

    make bench-reference-setup && .venv-ref/bin/pip install transformers safetensors
    .venv-ref/bin/python Tests/CLITests/Fixtures/hf/make_hf_fixture.py
"""
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(1234)
config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=24, vocab_size=128, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
model = GPT2LMHeadModel(config).eval()
with torch.no_grad():
    # GPT-2's 0.02-scale initialisation makes nearly uniform logits: widen every tensor
    # (LayerNorm gains and biases too) so the comparison exercises them all.
    for name, p in model.named_parameters():
        p.add_(torch.randn_like(p) * 0.3)

ids = torch.tensor([[5, 17, 99, 3, 127, 64, 0, 42, 42, 8, 77, 1],
                    [100, 2, 2, 56, 31, 90, 12, 7, 110, 64, 9, 15]])
out = {"ids": ids.tolist(), "transformers": __import__("transformers").__version__, "torch": torch.__version__}
for name, dtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
    directory = os.path.join(HERE, name)
    model.to(dtype).save_pretrained(directory, safe_serialization=True)
    loaded = GPT2LMHeadModel.from_pretrained(directory, torch_dtype=dtype).float().eval()
    with torch.no_grad():
        out[name] = [round(x, 7) for x in loaded(ids).logits.flatten().tolist()]
    model.float()
    os.remove(os.path.join(directory, "generation_config.json")) if os.path.exists(os.path.join(directory, "generation_config.json")) else None
with open(os.path.join(HERE, "logits.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("wrote", HERE, {k: os.path.getsize(os.path.join(HERE, k, "model.safetensors")) for k in ["f32", "f16", "bf16"]})
