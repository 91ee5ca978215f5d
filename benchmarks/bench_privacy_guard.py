"""Latency the privacy guard adds per request, measured in one run through LLaMA-Factory's ChatModel (the engine
behind `llamafactory-cli chat|api`), with and without `sfmed_privacy_db`, on the same model and prompts.

    python benchmarks/bench_privacy_guard.py --model saves/tiny/sft --db saves/tiny/privacy/db [--rounds 5]

Prompts: the database's high-risk queries (served the secure counterpart with the guard) and the bundled SFT
questions (generated, so the guard's cost is its embedding and search). Rounds alternate the two chat models so that
drifts of the machine hit both alike. Prints median milliseconds per request; writes
benchmarks/results/privacy_guard.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from llamafactory.chat import ChatModel

from sfmed_lf.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def timed_answers(chat_model: ChatModel, prompts: list[str]) -> list[float]:
    seconds = []
    for prompt in prompts:
        start = time.perf_counter()
        chat_model.chat([{"role": "user", "content": prompt}])
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saves/tiny/sft")
    parser.add_argument("--db", default="saves/tiny/privacy/db")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    common = {
        "model_name_or_path": args.model,
        "template": "sfmed",
        "infer_backend": "huggingface",
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False,
    }
    plain, guarded = ChatModel(common), ChatModel({**common, "sfmed_privacy_db": args.db})
    entries = [json.loads(line) for line in (Path(args.db) / "entries.jsonl").read_text().splitlines()]
    risky = [entry["query"] for entry in entries]
    normal = [row["instruction"] for row in json.loads((ROOT / "data" / "sfmed_sft_single.json").read_text())][:16]
    samples = {"plain_normal": [], "guarded_normal": [], "plain_risky": [], "guarded_risky": []}
    for _ in range(args.rounds):
        samples["plain_normal"] += timed_answers(plain, normal)
        samples["guarded_normal"] += timed_answers(guarded, normal)
        samples["plain_risky"] += timed_answers(plain, risky)
        samples["guarded_risky"] += timed_answers(guarded, risky)
    median_ms = {name: 1e3 * statistics.median(values) for name, values in samples.items() if values}
    result = {"model": args.model, "db_entries": len(entries), "rounds": args.rounds, "median_ms": median_ms}
    if "plain_normal" in median_ms:
        result["added_ms_per_generated_request"] = median_ms["guarded_normal"] - median_ms["plain_normal"]
        result["ratio_generated"] = median_ms["guarded_normal"] / median_ms["plain_normal"]
    for name, value in median_ms.items():
        print(f"{name:15s} {value:8.1f} ms")
    if "ratio_generated" in result:
        print(
            f"guard on a generated request: +{result['added_ms_per_generated_request']:.1f} ms "
            f"({result['ratio_generated']:.3f}x)"
        )
    atomic_write_text(ROOT / "benchmarks" / "results" / "privacy_guard.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
