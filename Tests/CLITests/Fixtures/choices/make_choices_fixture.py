#!/usr/bin/env python3
"""Writes the multiple-choice fixture of `ChoiceEvalTests`: a small randomly initialised
`GPT2LMHeadModel` (byte vocabulary, 32 positions) saved by transformers, questions in both
forms `--choices` reads, and the loss transformers' model gives every choice.
CI needs none of this: the outputs are committed.

    make bench-reference-setup && .venv-ref/bin/pip install transformers safetensors lm-eval
    .venv-ref/bin/python Tests/CLITests/Fixtures/choices/make_choices_fixture.py

Two conventions are scored. llmc, written out: HellaSwag endings get a leading space and are
encoded apart from the context (build-nanogpt's render_example); acc_norm is the lowest mean
loss per token. harness: lm-evaluation-harness's own HellaSwag preprocessing (its
`process_docs`), the continuation encoded with the context, acc_norm per character of the
choice. Both keep the joined tokens' last n_positions + 1 (the harness's crop); a choice's
loss is the negative log-softmax of its tokens at the positions before them; acc takes the
lowest sum; ties go to the first.
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
    hellaswag(7, "She", "Picks UP the violin and", ["plays. [step]", "begins a slow piece by Bach.", "drops it", "tunes"], 1),
    {"context": "x", "choices": ["y", "yy", "yyyyyyyyyyyyyyyy", "z"], "label": 2},
    hellaswag(9, "Snow falls on the quiet mountain village as the children", "build a", ["snowman.", "fort with walls of ice.", "fire", "sled"], 0),
    hellaswag(10, "[header] How to tie a knot [title] Hold", "the rope.  [step] then", ["loop it [substeps] once.", "pull it tight", "cut it  short.", "drop"], 1),
]
with open(os.path.join(HERE, "questions.jsonl"), "w") as f:
    for line in lines:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")

T = config.n_positions


def score(pairs, normalizers, label):
    """pairs: (context bytes, continuation bytes) per choice; acc_norm divides by normalizers."""
    nats, counts = [], []
    for c, e in pairs:
        window = (c + e)[-(T + 1):]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([window[:-1]])).logits[0].double(), dim=-1)
        n = len(e)
        assert n <= T, f"continuation {bytes(e)!r} is longer than the context"
        positions = range(len(window) - 1 - n, len(window) - 1)
        nats.append(-sum(logp[p, window[p + 1]].item() for p in positions))
        counts.append(n)
    normalized = [s / n for s, n in zip(nats, normalizers)]
    pred = min(range(len(nats)), key=lambda k: (nats[k], k))
    pred_norm = min(range(len(normalized)), key=lambda k: (normalized[k], k))
    return {"nats": [round(x, 6) for x in nats], "tokens": counts, "label": label, "pred": pred, "pred_norm": pred_norm}


def llmc(line):
    if "endings" in line:
        ctx, conts = line["ctx"], [" " + e for e in line["endings"]]
    else:
        ctx, conts = line["context"], line["choices"]
    pairs = [(list(ctx.encode("utf-8")), list(k.encode("utf-8"))) for k in conts]
    return score(pairs, [len(e) for _, e in pairs], int(line["label"]))


def harness(line):
    # lm-evaluation-harness's own HellaSwag code, then its _encode_pair and its acc_norm
    # (loglikelihood over the choice's characters); general lines are scored as written.
    import datasets
    from lm_eval.tasks.hellaswag import utils
    if "endings" in line:
        doc = utils.process_docs(datasets.Dataset.from_list([line]))[0]
        ctx, choices, conts = doc["query"], doc["choices"], [" " + c for c in doc["choices"]]
    else:
        ctx, choices, conts = line["context"], line["choices"], line["choices"]
    pairs = []
    for k in conts:
        spaces = len(ctx) - len(ctx.rstrip())
        c, k = (ctx[:-spaces], ctx[-spaces:] + k) if spaces else (ctx, k)
        whole, head = list((c + k).encode("utf-8")), list(c.encode("utf-8"))
        pairs.append((head, whole[len(head):]))
    return score(pairs, [len(ch) for ch in choices], int(line["label"]))


out = {"transformers": __import__("transformers").__version__, "torch": torch.__version__,
       "lm_eval": __import__("lm_eval").__version__}
for name, rule in [("llmc", llmc), ("harness", harness)]:
    questions = [rule(line) for line in lines]
    out[name] = {"questions": questions, "correct": sum(q["pred"] == q["label"] for q in questions),
                 "correct_norm": sum(q["pred_norm"] == q["label"] for q in questions)}
    assert any(q["pred"] != q["pred_norm"] for q in questions), f"{name}: the two accuracies should disagree somewhere"
assert out["llmc"]["questions"] != out["harness"]["questions"], "the rules should score differently"
with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(out, f, indent=1)
for name in ["llmc", "harness"]:
    r = out[name]
    print(name, "acc", r["correct"], "acc_norm", r["correct_norm"], "of", len(lines), [(q["pred"], q["pred_norm"], q["label"]) for q in r["questions"]])
