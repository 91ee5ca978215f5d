#!/usr/bin/env bash
# Sets everything up, then runs the SF-Med pipeline on a generated medical world with the tiny model; each step reads
# what the one before it wrote:
#   world (knowledge base -> datasets) -> tiny model (character tokenizer from the world's text)
#   -> near-duplicate removal of the SFT data -> medical:general token mix -> continued pre-training
#   -> instruction diversification (the CPT model as generator) -> system prompts attached -> SFT
#   -> preference pairs (SFT samples + the world's candidates, knowledge-base judge, 3 reward models, flip/drop)
#   -> DPO on the selected pairs with online merging (OnDARE, then OnTIES)
#   -> evaluation (SFT vs CPT, DPO vs SFT; Rouge-L, knowledge-base judge, multiple choice) and likelihood measures
#   -> memorization audit of the SFT model -> high-risk database -> the guarded server asked for the records
#   -> one report of every stage's effect: saves/tiny/report.md and report.png.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/setup.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
cd "$root"

servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true' EXIT
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # wait_for PORT LOG: until the OpenAI-compatible server on PORT lists its models
  python - "$1" "$2" <<'PY'
import sys, time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit(f"the server on port {sys.argv[1]} did not come up in 180 s; see {sys.argv[2]}")
PY
}
stop_last_server() { kill "${servers[-1]}"; unset 'servers[-1]'; }

sfmed doctor
mkdir -p saves/tiny/logs
rm -rf saves/tiny/data saves/tiny/pref saves/tiny/eval saves/tiny/privacy saves/tiny/measure  # resumable steps
sfmed world generate examples/yaml/tiny/world.yaml
sfmed tiny-model examples/yaml/tiny/tiny_model.yaml
sfmed data dedup examples/yaml/tiny/dedup.yaml
sfmed data mix examples/yaml/tiny/mix.yaml  # medical : general = 9 : 1 by tokens -> pt_mix.yaml
llamafactory-cli train saves/tiny/data/mix/pt_mix.yaml

# The knowledge-base judge serves the preference judges and the evaluation's judge for the rest of the demo.
port=$(free_port)
sfmed world judge saves/tiny/world --port "$port" > saves/tiny/logs/judge.log 2>&1 &
servers+=($!)
wait_for "$port" saves/tiny/logs/judge.log
judge_url="http://127.0.0.1:$port/v1"

# Instruction diversification: the CPT model, served by `llamafactory-cli api`, stands in for GLM-4-9B-Chat.
port=$(free_port)
API_HOST=127.0.0.1 API_PORT=$port llamafactory-cli api --model_name_or_path saves/tiny/pt --template sfmed \
  --infer_backend huggingface > saves/tiny/logs/generator.log 2>&1 &
servers+=($!)
wait_for "$port" saves/tiny/logs/generator.log
for pool in single multi; do
  sfmed data diversify "examples/yaml/tiny/diversify_$pool.yaml" "generator_url=http://127.0.0.1:$port/v1"
done
stop_last_server
sfmed data attach-system examples/yaml/tiny/attach_system.yaml  # on what dedup kept, with the diversified pools
llamafactory-cli train examples/yaml/tiny/sft.yaml dataset_dir=saves/tiny/data/diversified \
  dataset=world_sft_single_diversified,world_sft_multiturn_diversified

# Preference data at K = 3, judged by the knowledge base; DPO trains on what `select` wrote.
judges="[$(for model in kb-facts kb-safety kb-conduct; do printf '{"url": "%s", "model": "%s"},' "$judge_url" "$model"; done)]"
for step in sample judge train-rms score select; do
  sfmed pref "$step" examples/yaml/tiny/pref.yaml "judges=${judges%,]}]"
done
llamafactory-cli train examples/yaml/tiny/dpo.yaml
llamafactory-cli train examples/yaml/tiny/dpo.yaml sfmed_merge_method=onties output_dir=saves/tiny/dpo_onties

# Evaluation: what SFT adds to the CPT model, and what DPO adds to the SFT model.
sfmed eval all examples/yaml/tiny/eval.yaml "judge_url=$judge_url"
sfmed eval all examples/yaml/tiny/eval.yaml "judge_url=$judge_url" output_dir=saves/tiny/eval/dpo_vs_sft \
  "candidate_name=SF-Med-Tiny (DPO)" candidate_model_name_or_path=saves/tiny/dpo "baseline_name=SF-Med-Tiny (SFT)" \
  baseline_model_name_or_path=saves/tiny/sft
sfmed world measure examples/yaml/tiny/measure.yaml

# Privacy: the audit finds the leaked records, the database holds them, the guarded server refuses them.
sfmed privacy audit examples/yaml/tiny/privacy_audit.yaml
sfmed privacy build-db examples/yaml/tiny/privacy_db.yaml
for guard in unguarded guarded; do  # the same SFT model, without and with the database the audit filled
  port=$(free_port)
  options=(examples/yaml/tiny/infer_guarded.yaml)
  [ "$guard" = unguarded ] && options=(--model_name_or_path saves/tiny/sft --template sfmed --infer_backend huggingface)
  API_HOST=127.0.0.1 API_PORT=$port llamafactory-cli api "${options[@]}" > "saves/tiny/logs/$guard.log" 2>&1 &
  servers+=($!)
  wait_for "$port" "saves/tiny/logs/$guard.log"
  sfmed world ask-records saves/tiny/world "http://127.0.0.1:$port/v1" "saves/tiny/privacy/${guard}_answers.json"
  stop_last_server
done

sfmed world report examples/yaml/tiny/report.yaml
echo
echo "Demo finished. The report of every stage's effect: saves/tiny/report.md and saves/tiny/report.png"
echo "  world: saves/tiny/world (world_report.json, kb.json); models: models/sfmed-tiny, saves/tiny/{pt,sft,dpo,dpo_onties}"
echo "  evaluation: saves/tiny/eval/{sft_vs_pt,dpo_vs_sft}/report.md; measures: saves/tiny/measure/measure.json"
echo "  preference stage: saves/tiny/pref/{judge_report.json,score_report.json,selection_report.json,strength_histogram.png}"
echo "  privacy: saves/tiny/privacy/{audit_report.json,audit_rouge_l.png,guarded_answers.json}"
echo "  guarded serving: llamafactory-cli chat examples/yaml/tiny/infer_guarded.yaml"
