#!/usr/bin/env python3
"""Non-learned baselines on exactly the users of an `llmbs eval` predictions file, so a seeded
sample (`--limit N --seed S`) can be compared with them user for user.

  most-popular   the 10 most frequent training items (every user's sequence minus its last two)
  s1-last        walking the history from the newest item back, the most popular items sharing
                 its first semantic ID token (<s1_*>), history items skipped, until 10
  b1-last        the same with the first behavior ID token (<b1_*>)

Recall@10 and NDCG@10 (one target, IDCG = 1), as `llmbs eval` computes them.

Usage: scripts/simple-baselines.py DATA_DIR INDEX_JSON PREDICTIONS_JSONL valid|test [MAX_HISTORY]
"""
import collections
import json
import math
import os
import sys


def main():
    if len(sys.argv) < 5 or sys.argv[4] not in ("valid", "test"):
        sys.exit(__doc__)
    data, index_path, pred_path, split = sys.argv[1:5]
    max_history = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    inter_path = next(
        os.path.join(data, f) for f in os.listdir(data) if f.endswith(".inter.json")
    )
    inter = json.load(open(inter_path))
    index = json.load(open(index_path))

    def first(prefix):
        out = {}
        for item, toks in index.items():
            hit = [t for t in toks if t.startswith(prefix)]
            if not hit:
                sys.exit(f"{index_path}: item {item} has no {prefix}* token")
            out[int(item)] = hit[0]
        return out

    s1, b1 = first("<s1_"), first("<b1_")
    pop = collections.Counter()
    for seq in inter.values():
        pop.update(seq[:-2])
    ranked = [it for it, _ in pop.most_common()]
    groups = {"s1": collections.defaultdict(list), "b1": collections.defaultdict(list)}
    for it in ranked:
        groups["s1"][s1[it]].append(it)
        groups["b1"][b1[it]].append(it)

    def by_cluster(hist, key, tok):
        seen, out = set(hist), []
        for h in reversed(hist):
            for it in groups[key][tok[h]]:
                if it not in seen:
                    seen.add(it)
                    out.append(it)
                    if len(out) == 10:
                        return out
        return out

    users = []
    with open(pred_path) as f:
        for n, line in enumerate(f, 1):
            try:
                users.append(json.loads(line)["user"])
            except (json.JSONDecodeError, KeyError) as e:
                sys.exit(f"{pred_path}:{n}: not a prediction line ({e})")
    hits = collections.defaultdict(float)
    for u in users:
        if u not in inter:
            sys.exit(f"{pred_path}: user {u} is not in {inter_path}")
        seq = inter[u]
        hist, target = (seq[:-2], seq[-2]) if split == "valid" else (seq[:-1], seq[-1])
        hist = hist[-max_history:]
        for name, top in (
            ("most-popular", ranked[:10]),
            ("s1-last", by_cluster(hist, "s1", s1)),
            ("b1-last", by_cluster(hist, "b1", b1)),
        ):
            if target in top:
                hits[name + " R@10"] += 1
                hits[name + " N@10"] += 1 / math.log2(top.index(target) + 2)
    print(f"{split}, {len(users)} users of {pred_path}")
    print("| baseline | R@10 | N@10 |\n| --- | ---: | ---: |")
    for name in ("most-popular", "s1-last", "b1-last"):
        r, nd = hits[name + " R@10"] / len(users), hits[name + " N@10"] / len(users)
        print(f"| {name} | {r:.4f} | {nd:.4f} |")


if __name__ == "__main__":
    main()
