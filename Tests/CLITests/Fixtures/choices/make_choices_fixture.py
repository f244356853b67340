#!/usr/bin/env python3
"""Writes the multiple-choice fixture of `ChoiceEvalTests`: a small randomly initialised
`GPT2LMHeadModel` (byte vocabulary, 32 positions) saved by transformers, questions in both
forms `--choices` reads, and the loss transformers' model gives every choice.
CI needs none of this: the outputs are committed.

    make bench-reference-setup && .venv-ref/bin/pip install transformers safetensors
    .venv-ref/bin/python Tests/CLITests/Fixtures/choices/make_choices_fixture.py

The scoring below is the usual one, written out: HellaSwag endings get a leading space and
are encoded apart from the context (build-nanogpt's render_example); the joined tokens keep
their last n_positions + 1 (lm-evaluation-harness's crop); a choice's loss is the negative
log-softmax of its tokens at the positions before them; acc takes the lowest sum,
acc_norm the lowest mean per token, ties to the first.
"""
import json
import os

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(4321)
config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=256, activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                    bos_token_id=None, eos_token_id=None)
model = GPT2LMHeadModel(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.add_(torch.randn_like(p) * 0.3)
model.save_pretrained(os.path.join(HERE, "model"), safe_serialization=True)
extra = os.path.join(HERE, "model", "generation_config.json")
if os.path.exists(extra):
    os.remove(extra)

def hellaswag(i, ctx_a, ctx_b, endings, label):
    return {"ind": i, "activity_label": "Fixture", "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx_a + " " + ctx_b,
            "endings": endings, "label": label, "source_id": f"fixture~{i}", "split": "val", "split_type": "indomain"}

lines = [
    hellaswag(0, "A man is", "sitting on a roof.", ["is using wrap on skis.", "is ripping tiles off.",
                                                      "holds a rubik's cube.", "starts pulling up roofing."], 3),
    hellaswag(1, "A woman", "walks to the", ["door.", "kitchen and opens the fridge.", "car", "end of the long pier."], 1),
    hellaswag(2, "Two dogs run across a field, chasing a ball that the owner throws again and", "again; then they",
              ["stop.", "lie down in the grass to rest.", "fly", "bring it back to him."], 3),
    hellaswag(3, "The chef", "slices the onions and", ["cries.", "puts them in a hot pan.", "sings", "café"], "0"),
    {"context": "Question: What color is the sky?\nAnswer:", "choices": [" blue", " green", " very bright red indeed"], "label": 0},
    {"context": "2 + 2 =", "choices": [" 4", " 5", " four", " twenty-two"], "label": 0},
    {"context": "The capital of France is", "choices": [" Paris.", " Rome.", " a city on the Seine."], "label": 0},
    hellaswag(7, "She", "picks up the violin and", ["plays.", "begins a slow piece by Bach.", "drops it", "tunes"], 1),
    {"context": "x", "choices": ["y", "yy", "yyyyyyyyyyyyyyyy", "z"], "label": 2},
    hellaswag(9, "Snow falls on the quiet mountain village as the children", "build a", ["snowman.", "fort with walls of ice.", "fire", "sled"], 0),
]
with open(os.path.join(HERE, "questions.jsonl"), "w") as f:
    for line in lines:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")

T = config.n_positions
out = {"transformers": __import__("transformers").__version__, "torch": torch.__version__, "questions": []}
correct = correct_norm = 0
for line in lines:
    if "endings" in line:
        ctx, choices = line["ctx"], [" " + e for e in line["endings"]]
    else:
        ctx, choices = line["context"], line["choices"]
    label = int(line["label"])
    nats, counts = [], []
    for choice in choices:
        c, e = list(ctx.encode("utf-8")), list(choice.encode("utf-8"))
        window = (c + e)[-(T + 1):]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([window[:-1]])).logits[0].double(), dim=-1)
        n = len(e)
        assert n <= T, f"choice {choice!r} is longer than the context"
        positions = range(len(window) - 1 - n, len(window) - 1)
        nats.append(-sum(logp[p, window[p + 1]].item() for p in positions))
        counts.append(n)
    means = [s / n for s, n in zip(nats, counts)]
    pred = min(range(len(nats)), key=lambda k: (nats[k], k))
    pred_norm = min(range(len(means)), key=lambda k: (means[k], k))
    correct += pred == label
    correct_norm += pred_norm == label
    out["questions"].append({"nats": [round(x, 6) for x in nats], "tokens": counts, "label": label, "pred": pred, "pred_norm": pred_norm})
out["correct"], out["correct_norm"] = correct, correct_norm
assert any(q["pred"] != q["pred_norm"] for q in out["questions"]), "the two rules should disagree somewhere"
with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(out, f, indent=1)
print("acc", correct, "acc_norm", correct_norm, "of", len(lines), [(q["pred"], q["pred_norm"], q["label"]) for q in out["questions"]])
