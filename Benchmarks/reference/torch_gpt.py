"""PyTorch eager reference for `make bench`: the same GPT shapes, optimizer and clipping as
tessera's benchmark, on CPU, fp32 and bf16 autocast. Prints one JSON line per configuration:
the median step time of the timed steps, with its minimum and maximum.

The model is nanoGPT's own `model.py` when `--nanogpt DIR` names a nanoGPT checkout (fetched
beside the repository, never committed), else the same architecture written here from its
published description; both use PyTorch's fused SDPA attention on CPU.

A reference only: installed on demand into .venv-ref by `make bench-reference-setup`;
tessera never needs it.
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block=64, batch=12, vocab=65, bias=False),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block=256, batch=64, vocab=65, bias=False),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block=256, batch=4, vocab=50257, bias=True),
    "gpt2-1k": dict(n_layer=12, n_head=12, n_embd=768, block=1024, batch=1, vocab=50257, bias=True),
}


def nanogpt_model(directory, s):
    """nanoGPT's GPT with dropout 0; its forward returns (logits, loss)."""
    sys.path.insert(0, directory)
    import model as nanogpt  # noqa: E402  (nanoGPT's model.py)
    cfg = nanogpt.GPTConfig(block_size=s["block"], vocab_size=s["vocab"], n_layer=s["n_layer"], n_head=s["n_head"],
                            n_embd=s["n_embd"], dropout=0.0, bias=s["bias"])
    with contextlib.redirect_stdout(sys.stderr):   # nanoGPT prints its parameter count
        m = nanogpt.GPT(cfg)
    return m, lambda x, y: m(x, y)[1]


class Block(nn.Module):
    def __init__(self, c, h, bias):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(c, bias=bias)
        self.c_attn = nn.Linear(c, 3 * c, bias=bias)
        self.c_proj = nn.Linear(c, c, bias=bias)
        self.ln_2 = nn.LayerNorm(c, bias=bias)
        self.c_fc = nn.Linear(c, 4 * c, bias=bias)
        self.mlp_proj = nn.Linear(4 * c, c, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.wte = nn.Embedding(s["vocab"], s["n_embd"])
        self.wpe = nn.Embedding(s["block"], s["n_embd"])
        self.blocks = nn.ModuleList(Block(s["n_embd"], s["n_head"], s["bias"]) for _ in range(s["n_layer"]))
        self.ln_f = nn.LayerNorm(s["n_embd"], bias=s["bias"])

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def bench(name, precision, warmup, steps, nanogpt=None):
    s = SHAPES[name]
    torch.manual_seed(0)
    if nanogpt:
        model, step_loss = nanogpt_model(nanogpt, s)
    else:
        model = GPT(s)
        step_loss = model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    x = torch.randint(0, s["vocab"], (s["batch"], s["block"]))
    y = torch.randint(0, s["vocab"], (s["batch"], s["block"]))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = step_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    return dict(config=name, precision=precision, impl="nanogpt" if nanogpt else "pytorch",
                tokensPerSecond=s["batch"] * s["block"] / (ms / 1000), msPerStep=ms,
                msPerStepMin=1000 * min(times), msPerStepMax=1000 * max(times), steps=len(times),
                threads=torch.get_num_threads(), torch=torch.__version__)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append")
    ap.add_argument("--precision", action="append")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, help="timed steps (default: 60 tiny, 30 small, 10 gpt2, 6 gpt2-1k)")
    ap.add_argument("--nanogpt", help="a nanoGPT checkout whose model.py to benchmark")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for c in a.config or ["tiny", "small"]:
        for p in a.precision or ["fp32"]:
            steps = a.steps or {"tiny": 60, "small": 30, "gpt2": 10}.get(c, 6)
            print(json.dumps(bench(c, p, a.warmup, steps, a.nanogpt)), flush=True)
