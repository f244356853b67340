#!/usr/bin/env python3
"""Checks tessera's PEFT export with Hugging Face PEFT and writes the fixture of
`LoRAExportTests.testPEFTExportLoadsInPEFTWithTesserasLogits`.

`adapter_model.safetensors` and `adapter_config.json` in this directory are tessera's export
of fixed adapters (rank 4, alpha 8, on attn.c_attn and mlp.c_proj) for the Hugging Face
fixture base `../hf/f32`; the test rewrites them with `TESSERA_RECORD_PEFT=1`. This script
loads them with `peft.PeftModel.from_pretrained` onto that base, checks which modules carry
adapters, and writes the logits PEFT computes (unmerged, and after `merge_and_unload`) for the
token ids of `../hf/logits.json`. CI needs none of this: the outputs are committed.

    .venv-ref/bin/python Tests/CLITests/Fixtures/peft/make_peft_fixture.py
"""
import json
import os

import peft
import torch
from peft import PeftModel
from transformers import GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "hf", "f32")
ids = torch.tensor(json.load(open(os.path.join(HERE, "..", "hf", "logits.json")))["ids"])

base = GPT2LMHeadModel.from_pretrained(BASE, torch_dtype=torch.float32).eval()
model = PeftModel.from_pretrained(base, HERE).eval()
adapted = sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
expected = sorted(f"base_model.model.transformer.h.{l}.{m}" for l in range(2) for m in ["attn.c_attn", "mlp.c_proj"])
assert adapted == expected, adapted
with torch.no_grad():
    logits = model(ids).logits.flatten()
    merged = model.merge_and_unload()(ids).logits.flatten()
print("PEFT vs its own merge: largest logit difference", (logits - merged).abs().max().item())
out = {"ids": ids.tolist(), "peft": peft.__version__, "torch": torch.__version__,
       "logits": [round(x, 7) for x in logits.tolist()]}
with open(os.path.join(HERE, "logits.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("wrote", os.path.join(HERE, "logits.json"), "adapted modules:", len(adapted))
