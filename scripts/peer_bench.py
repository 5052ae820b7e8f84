#!/usr/bin/env python3
"""PyTorch/transformers side of the llmbs side-by-side CPU benchmark.

Loads SmolLM2-135M-Instruct from a GGUF file with transformers (which
de-quantizes every tensor to float32 at load time) and times four workloads.
Prints ONE JSON line per workload result to stdout; everything else (progress,
warnings, notes) goes to stderr.

  forward  inference forward, hidden states only (model.model, no LM head), [batch, seq]
  train    causal-LM forward with labels (CE loss) + backward + AdamW(lr=5e-5), [batch, seq]
  train-bf16  the same under torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN bf16 matmuls;
           weights, gradients and AdamW stay f32), the peer of `llmbs bench --dtype bf16`
  embed    mean-pooled final hidden state over Beauty item texts (padding excluded)
  beam     constrained beam search (LC-Rec style): 20 beams, 4 new tokens, trie of item IDs;
           one JSON line per beam batch size (default 1 and 8)

Run it through scripts/bench-peer.sh, which creates the .venv-peer it needs.
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = (
    Path(os.environ.get("LLMBS_CACHE", Path.home() / ".cache" / "llmbs"))
    / "models"
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beauty"
WORKLOADS = ("forward", "train", "train-bf16", "embed", "beam")


def log(*a):
    print("[peer_bench]", *a, file=sys.stderr, flush=True)


def emit(rec: dict):
    print(json.dumps(rec), flush=True)


def timed(fn, runs: int, warmup: int = 1):
    """Run fn() `warmup` times untimed, then `runs` times; return (median_s, [s...])."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def rnd(ts):
    return [round(t, 6) for t in ts]


# --------------------------------------------------------------------- loading
def load(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t1 = time.perf_counter()
    kw = dict(gguf_file=gguf.name)
    try:  # transformers >= 4.56 calls it `dtype`; older ones `torch_dtype`
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), torch_dtype=torch.float32, **kw)
    t2 = time.perf_counter()
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    n = sum(p.numel() for p in model.parameters())
    log(
        f"loaded {gguf.name}: tokenizer {t1 - t0:.1f}s, model {t2 - t1:.1f}s (de-quantized to "
        f"{model.dtype}), {n / 1e6:.1f}M params, vocab {len(tok)}, attn={model.config._attn_implementation}"
    )
    return tok, model


# --------------------------------------------------------------------- forward
def bench_forward(model, args):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g)

    def step():
        with torch.inference_mode():
            return model.model(input_ids=ids, use_cache=False).last_hidden_state

    med, ts = timed(step, args.runs)
    ntok = args.batch * args.seq
    emit(dict(workload="forward", tokens_per_s=ntok / med, batch=args.batch, seq=args.seq,
              median_s=med, runs=rnd(ts), threads=args.threads))


# --------------------------------------------------------------------- train
def bench_train(model, args, bf16=False):
    import contextlib

    import torch

    m = copy.deepcopy(model)  # keep the shared model's weights untouched
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=5e-5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, m.config.vocab_size, (args.batch, args.seq), generator=g)
    losses = []

    def autocast():
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = m(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.detach().float().item())

    cpu0 = time.process_time()
    med, ts = timed(step, args.runs)
    cpu = (time.process_time() - cpu0) / (args.runs + 1)
    ntok = args.batch * args.seq
    emit(dict(workload="train-bf16" if bf16 else "train", tokens_per_s=ntok / med,
              batch=args.batch, seq=args.seq, cpu_s_mean=cpu,
              median_s=med, runs=rnd(ts), threads=args.threads, optimizer="AdamW", lr=5e-5,
              loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4)))
    del m, opt


# --------------------------------------------------------------------- embed
def item_texts(data_dir: Path, n: int):
    with open(data_dir / "Beauty.item.json") as f:
        items = json.load(f)
    out = []
    for key, it in items.items():
        if len(out) >= n:
            break
        cats = it.get("categories", "")
        if isinstance(cats, list):
            cats = ",".join(map(str, cats))
        text = html.unescape(it.get("title", "")) + ". Categories: " + cats
        out.append((key, " ".join(text.split())))
    return out


def bench_embed(tok, model, args):
    import torch

    texts = [t for _, t in item_texts(Path(args.data_dir), args.items)]
    bs = args.embed_batch
    pad = tok.pad_token_id

    def tokenize():
        enc = tok(texts, add_special_tokens=False)["input_ids"]
        if args.embed_max_len > 0:
            enc = [e[: args.embed_max_len] for e in enc]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        batches = []
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            L = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), L), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(enc[i])] = torch.tensor(enc[i])
                mask[r, : len(enc[i])] = 1
            batches.append((idx, ids, mask))
        return batches

    def embed(batches):
        out = torch.empty(len(texts), model.config.hidden_size)
        with torch.inference_mode():
            for idx, ids, mask in batches:
                h = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                m = mask.unsqueeze(-1).to(h.dtype)
                out[idx] = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return out

    pre = tokenize()
    real = sum(int(m.sum()) for _, _, m in pre)
    padded = sum(m.numel() for _, _, m in pre)
    lens = sorted(int(m.sum(1).max()) for _, _, m in pre)
    embed(pre[:1])  # warm-up on one batch
    tok_ts, ts = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        b = tokenize()
        t1 = time.perf_counter()
        e = embed(b)
        t2 = time.perf_counter()
        tok_ts.append(t1 - t0)
        ts.append(t2 - t0)
    assert torch.isfinite(e).all()
    med = statistics.median(ts)
    emit(dict(workload="embed", tokens_per_s=real / med, items_per_s=len(texts) / med,
              batch=bs, seq=None, median_s=med, runs=rnd(ts), threads=args.threads,
              items=len(texts), real_tokens=real, padded_tokens=padded,
              max_len=lens[-1] if lens else 0, tokenize_median_s=statistics.median(tok_ts),
              note="timed: tokenize + pad + forward + mean-pool"))


# --------------------------------------------------------------------- beam
def build_trie(codes):
    trie: dict = {}
    for c in codes:
        node = trie
        for t in c:
            node = node.setdefault(t, {})
    return trie


def bench_beam(tok, model, args):
    import torch

    tok = copy.deepcopy(tok)
    m = copy.deepcopy(model)
    new_tokens = [f"<{p}_{i}>" for p in "abcd" for i in range(256)]
    tok.add_tokens(new_tokens)
    m.resize_token_embeddings(len(tok))
    m.eval()
    tid = {t: tok.convert_tokens_to_ids(t) for t in new_tokens}
    # sanity: each new token is one id
    probe = tok("<a_1><b_2><c_3><d_4>", add_special_tokens=False)["input_ids"]
    assert probe == [tid["<a_1>"], tid["<b_2>"], tid["<c_3>"], tid["<d_4>"]], probe

    rng = random.Random(args.seed)
    codes = set()
    while len(codes) < args.trie_items:
        codes.add(tuple(rng.randrange(256) for _ in range(4)))
    codes = sorted(codes)
    code_ids = [tuple(tid[f"<{p}_{c}>"] for p, c in zip("abcd", code)) for code in codes]
    trie = build_trie(code_ids)
    eos = tok.eos_token_id

    def code_str(code):
        return "".join(f"<{p}_{c}>" for p, c in zip("abcd", code))

    n_users = max(args.beam_users, max(args.beam_batches))
    prompts = []
    for _ in range(n_users):
        hist = [codes[rng.randrange(len(codes))] for _ in range(args.history)]
        prompts.append(
            "The user has purchased: " + ",".join(code_str(h) for h in hist)
            + ". Predict the next item.\nResponse:"
        )
    plen = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    log(f"beam: trie of {len(codes)} item IDs, prompt tokens {min(plen)}..{max(plen)}")
    tok.padding_side = "left"

    def run(batch_prompts):
        enc = tok(batch_prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        start = enc["input_ids"].shape[1]  # left padded: generated part begins here

        def allowed(batch_id, sent):
            node = trie
            for t in sent[start:].tolist():
                node = node.get(t)
                if node is None:
                    return [eos]
            return list(node.keys()) or [eos]

        with torch.inference_mode():
            out = m.generate(
                **enc, num_beams=args.num_beams, num_return_sequences=args.num_beams,
                max_new_tokens=4, prefix_allowed_tokens_fn=allowed, do_sample=False,
                early_stopping=True, pad_token_id=tok.pad_token_id, eos_token_id=eos,
            )
        return out[:, start:]

    for bsz in args.beam_batches:
        users = prompts[: max(args.beam_users, bsz)]
        users = users[: len(users) - len(users) % bsz] if len(users) >= bsz else users
        groups = [users[i : i + bsz] for i in range(0, len(users), bsz)]
        got = run(groups[0])  # warm-up + correctness check
        ok = sum(tuple(r.tolist()) in set(code_ids) for r in got)
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            for gp in groups:
                run(gp)
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        emit(dict(workload="beam", users_per_s=len(users) / med, batch=bsz, seq=max(plen),
                  median_s=med, runs=rnd(ts), threads=args.threads, users=len(users),
                  num_beams=args.num_beams, max_new_tokens=4, trie_items=len(codes),
                  prompt_tokens_mean=round(sum(plen[: len(users)]) / len(users), 1),
                  valid_ids_in_warmup=f"{ok}/{got.shape[0]}"))
    del m


# --------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--runs", type=int, default=5, help="timed runs per workload (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="forward/train batch")
    ap.add_argument("--seq", type=int, default=128, help="forward/train sequence length")
    ap.add_argument("--items", type=int, default=256, help="embed: first N Beauty items")
    ap.add_argument("--embed-batch", type=int, default=32)
    ap.add_argument("--embed-max-len", type=int, default=0, help="embed: truncate to N tokens (0 = no)")
    ap.add_argument("--beam-users", type=int, default=8, help="beam: users per timed run")
    ap.add_argument("--beam-batches", default="1,8", help="beam: batch sizes, comma separated")
    ap.add_argument("--num-beams", type=int, default=20)
    ap.add_argument("--history", type=int, default=20, help="beam: item IDs in each prompt")
    ap.add_argument("--trie-items", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.beam_batches = [int(x) for x in args.beam_batches.split(",") if x]
    wl = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in wl if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {WORKLOADS}")
    if not args.gguf.is_file():
        ap.error(f"GGUF not found: {args.gguf} (run scripts/fetch-model.sh or pass --gguf)")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    log(f"torch {torch.__version__} transformers {transformers.__version__} threads={torch.get_num_threads()}")

    tok, model = load(args.gguf)
    for w in wl:
        t0 = time.perf_counter()
        if w == "forward":
            bench_forward(model, args)
        elif w == "train":
            bench_train(model, args)
        elif w == "train-bf16":
            bench_train(model, args, bf16=True)
        elif w == "embed":
            bench_embed(tok, model, args)
        elif w == "beam":
            bench_beam(tok, model, args)
        log(f"{w}: done in {time.perf_counter() - t0:.1f}s wall")


if __name__ == "__main__":
    main()
