"""Latency the privacy guard adds per request, measured in one run through LLaMA-Factory's ChatModel (the engine
behind `llamafactory-cli chat|api|webchat`), with and without `sfmed_privacy_db`, on the same model and prompts.

    python benchmarks/bench_privacy_guard.py --model saves/tiny/sft --db saves/tiny/privacy/db [--rounds 5]

Prompts: the database's high-risk queries (refused by the guard: no generation) and generated control questions
(sfmed_lf/privacy/controls.py; answered, so the guard's cost is its input checks plus the output check). Rounds
alternate the plain and the guarded chat model so that drifts of the machine hit both alike; answers are timed
whole (chat) and streamed (stream_chat, where the guard holds back the last characters until the end). The
guard's own cost per check is timed on the guarded engine's guard in the same rounds. Prints medians; writes
benchmarks/results/privacy_guard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from llamafactory.chat import ChatModel

from sfmed_lf.privacy.controls import control_questions
from sfmed_lf.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def timed(call, prompts: list[str]) -> list[float]:
    seconds = []
    for prompt in prompts:
        start = time.perf_counter()
        call([{"role": "user", "content": prompt}])
        seconds.append(time.perf_counter() - start)
    return seconds


def streamed(chat_model: ChatModel):
    return lambda messages: "".join(chat_model.stream_chat(messages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saves/tiny/sft")
    parser.add_argument("--db", default="saves/tiny/privacy/db")
    parser.add_argument("--template", default="sfmed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    common = {
        "model_name_or_path": args.model,
        "template": args.template,
        "infer_backend": "huggingface",
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False,
    }
    plain, guarded = ChatModel(common), ChatModel({**common, "sfmed_privacy_db": args.db})
    guard = guarded.engine.sfmed_privacy_guard
    entries = [json.loads(line) for line in (Path(args.db) / "entries.jsonl").read_text().splitlines()]
    risky = [entry["query"] for entry in entries][: args.prompts]
    normal = control_questions(args.prompts, seed=99)
    answers = [plain.chat([{"role": "user", "content": q}])[0].response_text for q in normal]
    samples: dict[str, list[float]] = {
        name: []
        for name in (
            "plain_normal",
            "guarded_normal",
            "plain_normal_stream",
            "guarded_normal_stream",
            "plain_risky",
            "guarded_risky",
            "check_embedding",
            "check_lexical",
            "check_output",
        )
    }
    for _ in range(args.rounds):
        samples["plain_normal"] += timed(plain.chat, normal)
        samples["guarded_normal"] += timed(guarded.chat, normal)
        samples["plain_normal_stream"] += timed(streamed(plain), normal)
        samples["guarded_normal_stream"] += timed(streamed(guarded), normal)
        samples["plain_risky"] += timed(plain.chat, risky)
        samples["guarded_risky"] += timed(guarded.chat, risky)
        for question, answer in zip(normal, answers, strict=True):
            decision = guard.check_input([{"role": "user", "content": question}])
            for check in ("embedding", "lexical"):
                samples[f"check_{check}"].append(decision.timings.get(check, 0.0))
            samples["check_output"].append(guard.check_output(answer).seconds)
    median_ms = {name: 1e3 * statistics.median(values) for name, values in samples.items() if values}
    result = {
        "model": args.model,
        "db_entries": len(entries),
        "checks": list(guard.checks),
        "hold_back_characters": guard.hold_back,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "median_ms": median_ms,
        "ratio_generated": median_ms["guarded_normal"] / median_ms["plain_normal"],
        "ratio_generated_stream": median_ms["guarded_normal_stream"] / median_ms["plain_normal_stream"],
        "added_ms_per_generated_request": median_ms["guarded_normal"] - median_ms["plain_normal"],
    }
    if risky:
        result["ratio_refused"] = median_ms["guarded_risky"] / median_ms["plain_risky"]
    for name, value in median_ms.items():
        print(f"{name:22s} {value:9.2f} ms")
    print(
        f"guard on a generated request: +{result['added_ms_per_generated_request']:.1f} ms "
        f"({result['ratio_generated']:.3f}x; streamed {result['ratio_generated_stream']:.3f}x); "
        f"load average {result['load_average'][0]:.1f}"
    )
    atomic_write_text(ROOT / "benchmarks" / "results" / "privacy_guard.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
