#!/usr/bin/env bash
# Sets everything up, then runs SF-Med's pipeline on a generated medical world with the tiny model, as one recipe
# (examples/yaml/tiny/recipe.yaml, the same runner as the 7B recipe): world -> tiny model -> near-duplicate removal
# -> token mix -> CPT -> instruction diversification -> system prompts -> SFT -> preference pairs (knowledge-base
# judge, 3 reward models, flip/drop) -> DPO with online merging (OnDARE, OnTIES) -> evaluation and likelihood
# measures -> memorization audit -> the guard's database -> the plain and the guarded server asked for the records
# (chat and completion) -> one report of every stage's effect: saves/tiny/report.md and report.png. Run it again after a failure or a kill: finished stages
# are skipped, a killed one resumes. `sfmed recipe status examples/yaml/tiny/recipe.yaml` shows where it stands.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/setup.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
cd "$root"

sfmed doctor
sfmed recipe run examples/yaml/tiny/recipe.yaml "$@"
echo
echo "Demo finished. The report of every stage's effect: saves/tiny/report.md and saves/tiny/report.png"
echo "  world: saves/tiny/world (world_report.json, kb.json); models: models/sfmed-tiny, saves/tiny/{pt,sft,dpo,dpo_onties}"
echo "  evaluation: saves/tiny/eval/{sft_vs_pt,dpo_vs_sft}/report.md; measures: saves/tiny/measure/measure.json"
echo "  preference stage: saves/tiny/pref/{judge_report.json,score_report.json,selection_report.json,strength_histogram.png}"
echo "  privacy: saves/tiny/privacy/{audit_report.json,audit_rouge_l.png}; served answers: saves/tiny/serving/"
echo "  logs of every stage: saves/tiny/recipe/logs; guarded serving: llamafactory-cli chat examples/yaml/tiny/infer_guarded.yaml"
