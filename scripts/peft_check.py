#!/usr/bin/env python3
"""Cross-check of llmbs's PEFT adapters against Python PEFT + transformers (optional, not CI).

Needs torch, transformers and peft (e.g. `.venv-peer/bin/python -m pip install peft`):

    .venv-peer/bin/python scripts/peft_check.py [--keep DIR]

1. Rust (`tests/peft.rs`, ignored test peft_fixture_write) writes a tiny random Llama as an HF
   directory, a trained-looking LoRA adapter in PEFT layout, and its own logits (adapter off,
   on, merged).
2. transformers loads the HF directory (logits vs ours, adapter off); peft.PeftModel loads our
   adapter (vs ours, on); merge_and_unload (vs ours, merged).
3. PEFT makes its own adapter (get_peft_model, random A and B, save_pretrained); Rust loads it
   (ignored test peft_fixture_read) and `llmbs merge` folds it in; both are compared with PEFT.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


def cargo_ignored_test(name, fixture):
    env = dict(os.environ, LLMBS_PEFT_FIXTURE=str(fixture))
    subprocess.run(
        ["cargo", "test", "--release", "--test", "peft", "--", "--ignored", "--exact", name],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def compare(what, ours, theirs, results):
    diff = (ours - theirs).abs().max().item()
    ok = diff < TOL
    results.append({"check": what, "max_abs_diff": diff, "ok": ok})
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max |diff| = {diff:.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the fixture here and keep it")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        fx = Path(args.keep)
        fx.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        fx = Path(tmp.name)
    torch.manual_seed(0)
    results = []

    cargo_ignored_test("peft_fixture_write", fx)
    ours = load_file(str(fx / "ours.safetensors"))
    ids = ours["ids"].long()
    base = LlamaForCausalLM.from_pretrained(fx / "base", torch_dtype=torch.float32).eval()
    compare("base model (transformers) vs llmbs, adapter off", ours["off"], logits(base, ids), results)
    peft_model = PeftModel.from_pretrained(base, fx / "adapter").eval()
    compare("our adapter in peft.PeftModel vs llmbs, adapter on", ours["on"], logits(peft_model, ids), results)
    with peft_model.disable_adapter():
        compare("PeftModel.disable_adapter vs llmbs, adapter off", ours["off"], logits(peft_model, ids), results)
    merged = peft_model.merge_and_unload()
    compare("peft merge_and_unload vs llmbs merge_adapter", ours["merged"], logits(merged, ids), results)

    fresh = LlamaForCausalLM.from_pretrained(fx / "base", torch_dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=24, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(fresh, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    pm.eval()
    pm.save_pretrained(fx / "py_adapter")
    want = logits(pm, ids)
    cargo_ignored_test("peft_fixture_read", fx)
    ours_py = load_file(str(fx / "ours_py.safetensors"))
    compare("PEFT-saved adapter loaded by llmbs vs PEFT, adapter on", ours_py["on"], want, results)
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    subprocess.run(
        [str(ROOT / "target/release/llmbs"), "merge", "--model", str(fx / "base"),
         "--adapter", str(fx / "py_adapter"), "--out", str(fx / "merged"), "--device", "cpu"],
        check=True,
    )
    merged_dir = LlamaForCausalLM.from_pretrained(fx / "merged", torch_dtype=torch.float32).eval()
    compare("`llmbs merge` of the PEFT adapter, loaded by transformers, vs PEFT", logits(merged_dir, ids), want, results)

    print(json.dumps({"ok": all(r["ok"] for r in results), "results": results}, indent=1))
    if tmp:
        tmp.cleanup()
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
