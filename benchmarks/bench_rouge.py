"""Chinese Rouge-L F: sfmed_lf.eval.rouge (bit-parallel LCS) vs rouge_chinese on the same pairs, in one run.

    python benchmarks/bench_rouge.py [--repeats 5]

Pairs: real medical answers from ../shared/realdata (Huatuo-26M and CMtMedQA test slices: each reference against the
next one, and each question against its reference) when present, else the bundled evaluation items. Both sides get
the same character tokens; the scores are checked equal (to 1e-7) before timing. Prints the median time per pass
and the speed-up; writes benchmarks/results/rouge.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rouge_chinese import Rouge

from sfmed_lf.eval.convert import convert_items
from sfmed_lf.formats.items import load_items
from sfmed_lf.text.rouge import rouge_l_f, tokenize
from sfmed_lf.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


def benchmark_pairs() -> tuple[str, list[tuple[str, str]]]:
    if REALDATA.is_dir():
        items = convert_items("huatuo26m", REALDATA / "zhongjing_huatuo26m_test.jsonl")[0]
        items += convert_items("cmtmedqa", REALDATA / "zhongjing_cmtmedqa_test.jsonl")[0]
        source = "realdata: Huatuo-26M + CMtMedQA test slices"
    else:
        items = load_items(ROOT / "data" / "sfmed_eval_dialogue.jsonl")
        source = "bundled evaluation items"
    references = [item.reference for item in items]
    pairs = [(references[i], references[(i + 1) % len(references)]) for i in range(len(references))]
    return source, pairs + [(item.prompt.question, item.reference) for item in items]


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    source, pairs = benchmark_pairs()
    tokenized = [(" ".join(tokenize(h)), " ".join(tokenize(r))) for h, r in pairs]
    reference_scorer = Rouge()

    def ours() -> list[float]:
        return [rouge_l_f(h, r) for h, r in pairs]

    def theirs() -> list[float]:
        return [reference_scorer.get_scores(h, r)[0]["rouge-l"]["f"] for h, r in tokenized]

    difference = max(abs(a - b) for a, b in zip(ours(), theirs(), strict=True))
    assert difference < 1e-7, f"scores differ by {difference}"
    ours_s, theirs_s = median_seconds(ours, args.repeats), median_seconds(theirs, args.repeats)
    characters = sum(len(h) + len(r) for h, r in pairs) / len(pairs)
    result = {
        "pairs": len(pairs),
        "source": source,
        "mean_characters_per_pair": round(characters, 1),
        "max_score_difference": difference,
        "sfmed_seconds": ours_s,
        "rouge_chinese_seconds": theirs_s,
        "speedup": theirs_s / ours_s,
    }
    print(f"{len(pairs)} pairs ({source}), {characters:.0f} characters per pair, max |diff| {difference:.1e}")
    print(f"  rouge_chinese {theirs_s * 1e3:.1f} ms, sfmed_lf {ours_s * 1e3:.1f} ms: speed-up {theirs_s / ours_s:.0f}x")
    atomic_write_text(ROOT / "benchmarks" / "results" / "rouge.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
