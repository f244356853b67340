"""Writes Tests/ModelTests/Fixtures/gpt_reference.json: a PyTorch reference for the Swift model.

PyTorch is needed only to regenerate the fixture (`make fixture`), never by tessera or CI.
The model below is written from the GPT-2 description (pre-LN blocks, causal attention,
tanh-GELU MLP, tied LM head), with parameter names equal to tessera's layout names.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(0)
rng = np.random.default_rng(1234)

cfg = dict(nLayer=2, nHead=2, nEmbd=16, blockSize=8, vocabSize=11, bias=True)
B, T = 2, 8
L, H, C, V = cfg["nLayer"], cfg["nHead"], cfg["nEmbd"], cfg["vocabSize"]


def names_and_shapes():
    out = [("wte.weight", (V, C)), ("wpe.weight", (cfg["blockSize"], C))]
    for l in range(L):
        p = f"h.{l}."
        out += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                (p + "attn.c_attn.weight", (3 * C, C)), (p + "attn.c_attn.bias", (3 * C,)),
                (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                (p + "mlp.c_fc.weight", (4 * C, C)), (p + "mlp.c_fc.bias", (4 * C,)),
                (p + "mlp.c_proj.weight", (C, 4 * C)), (p + "mlp.c_proj.bias", (C,))]
    out += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    return out


params = {}
for name, shape in names_and_shapes():
    if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
        v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1:
        v = 0.05 * rng.standard_normal(shape)
    else:
        v = 0.2 * rng.standard_normal(shape)
    params[name] = torch.tensor(v, dtype=torch.float64, requires_grad=True)

tokens = torch.tensor(rng.integers(0, V, size=(B, T)), dtype=torch.long)
targets = torch.tensor(rng.integers(0, V, size=(B, T)), dtype=torch.long)
targets[1, 3] = -1  # an ignored (padding) position


def forward(P):
    x = P["wte.weight"][tokens] + P["wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    hs = C // H
    for l in range(L):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps=1e-5)
        qkv = h @ P[p + "attn.c_attn.weight"].T + P[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, H, hs).transpose(1, 2)
        k = k.view(B, T, H, hs).transpose(1, 2)
        v = v.view(B, T, H, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"].T + P[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ P[p + "mlp.c_fc.weight"].T + P[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ P[p + "mlp.c_proj.weight"].T + P[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps=1e-5)
    return x @ P["wte.weight"].T


logits = forward(params)
loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
loss.backward()

fixture = {
    "config": cfg, "B": B, "T": T,
    "tokens": tokens.flatten().tolist(), "targets": targets.flatten().tolist(),
    "params": {n: p.detach().flatten().tolist() for n, p in params.items()},
    "logits": logits.detach().flatten().tolist(),
    "loss": loss.item(),
    "grads": {n: p.grad.flatten().tolist() for n, p in params.items()},
}

# Three AdamW steps with global-norm clipping, weight decay on 2-D tensors only.
lr, betas, eps, wd, clip = 1e-2, (0.9, 0.95), 1e-8, 0.1, 1.0
work = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
decay = [p for n, p in work.items() if p.dim() >= 2]
nodecay = [p for n, p in work.items() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": nodecay, "weight_decay": 0.0}],
                        lr=lr, betas=betas, eps=eps)
step_losses = []
for _ in range(3):
    opt.zero_grad()
    lo = F.cross_entropy(forward(work).view(-1, V), targets.view(-1), ignore_index=-1)
    lo.backward()
    torch.nn.utils.clip_grad_norm_(list(work.values()), clip)
    opt.step()
    step_losses.append(lo.item())
fixture["adamw"] = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, "weightDecay": wd, "clip": clip,
                    "losses": step_losses,
                    "params": {n: p.detach().flatten().tolist() for n, p in work.items()}}

out = sys.argv[1] if len(sys.argv) > 1 else "Tests/ModelTests/Fixtures/gpt_reference.json"
with open(out, "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
print(f"wrote {out}: loss {loss.item():.6f}, torch {torch.__version__}")
