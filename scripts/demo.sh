#!/usr/bin/env bash
# Sets everything up, then runs the SF-Med demo pipeline on the embedded tiny model:
#   near-duplicate report -> tiny model -> medical:general token mix -> continued pre-training
#   -> instruction diversification (the CPT model served as generator) -> system prompts attached -> SFT
#   -> preference pairs (SFT model answers, rule judges vote, 3 reward models, flip/drop)
#   -> DPO with online merging (OnDARE, then OnTIES)
#   -> evaluation of the DPO model against the SFT model on the bundled items
#   -> memorization audit of the SFT model on its training data, and the privacy guard's database.
# Outputs: models/sfmed-tiny, saves/tiny/{pt,sft,dpo,dpo_onties} (each with LLaMA-Factory's loss plots) and
# saves/tiny/eval (report.md, report.json, report.png), saves/tiny/privacy (audit report, histogram, database).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/scripts/setup.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
cd "$root"

sfmed doctor
sfmed data check sfmed_sample_sft_single && sfmed data check sfmed_sample_sft_multiturn  # every row as LF will read it
sfmed data dedup examples/yaml/tiny/dedup.yaml  # near-duplicates of the bundled SFT data, report only
sfmed tiny-model examples/yaml/tiny/tiny_model.yaml
sfmed data mix examples/yaml/tiny/mix.yaml  # medical : general = 1.3 : 1.4 by tokens -> pt_mix.yaml
llamafactory-cli train saves/tiny/data/mix/pt_mix.yaml

servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true' EXIT
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# serve_model MODEL LOG: `llamafactory-cli api` in the background on a free port, set in $port once it answers
serve_model() {
  port=$(free_port)
  API_HOST=127.0.0.1 API_PORT=$port llamafactory-cli api --model_name_or_path "$1" --template sfmed \
    --infer_backend huggingface > "$2" 2>&1 &
  servers+=($!)
  wait_for "$port" "$2"
}
wait_for() {
  python - "$1" "$2" <<'PY'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit(f"the server on port {sys.argv[1]} did not come up in 120 s; see {sys.argv[2]}")
PY
}

# Instruction diversification: the CPT model, served by `llamafactory-cli api`, stands in for GLM-4-9B-Chat.
mkdir -p saves/tiny/data saves/tiny/logs
serve_model saves/tiny/pt saves/tiny/logs/generator.log
rm -rf saves/tiny/data/diversify  # the rounds resume only for the same generator; the CPT model was just retrained
for pool in single multi; do
  sfmed data diversify "examples/yaml/tiny/diversify_$pool.yaml" "generator_url=http://127.0.0.1:$port/v1"
done
kill "${servers[-1]}"
sfmed data attach-system examples/yaml/tiny/attach_system.yaml
llamafactory-cli train examples/yaml/tiny/sft.yaml dataset_dir=saves/tiny/data/diversified \
  dataset=sfmed_sample_sft_single_diversified,sfmed_sample_sft_multiturn_diversified

# Preference data at K = 3: the SFT model answers 4 times per prompt (served by `llamafactory-cli api`), three
# rule-based judges vote (a random tiny model cannot judge; `sfmed pref rule-judge`), three reward models score.
rm -rf saves/tiny/pref  # answers and judgments resume only for the same models
serve_model saves/tiny/sft saves/tiny/logs/policy.log
sfmed pref sample examples/yaml/tiny/pref.yaml "policy_url=http://127.0.0.1:$port/v1"
kill "${servers[-1]}"
judge_port=$(free_port)
sfmed pref rule-judge --port "$judge_port" > saves/tiny/logs/judges.log 2>&1 &
servers+=($!)
wait_for "$judge_port" saves/tiny/logs/judges.log
judges="[$(for rule in terms length clean; do printf '{"url": "http://127.0.0.1:%s/v1", "model": "%s"},' "$judge_port" "$rule"; done)]"
sfmed pref judge examples/yaml/tiny/pref.yaml "judges=${judges%,]}]"
kill "${servers[-1]}"
for step in train-rms score select; do sfmed pref "$step" examples/yaml/tiny/pref.yaml; done
llamafactory-cli train examples/yaml/tiny/dpo.yaml
llamafactory-cli train examples/yaml/tiny/dpo.yaml sfmed_merge_method=onties output_dir=saves/tiny/dpo_onties
rm -rf saves/tiny/eval  # answers are resumable; a fresh demo compares the freshly trained models
sfmed eval all examples/yaml/tiny/eval.yaml
rm -rf saves/tiny/privacy  # the audit resumes only for the same model; the SFT model was just retrained
sfmed privacy audit examples/yaml/tiny/privacy_audit.yaml
sfmed privacy build-db examples/yaml/tiny/privacy_db.yaml

echo
echo "Demo finished. Trained models and loss plots:"
for stage in pt sft dpo dpo_onties; do
  echo "  saves/tiny/$stage: $(cd "saves/tiny/$stage" && ls ./*.png model.safetensors | tr '\n' ' ')"
done
echo "  online merging reports: saves/tiny/dpo/sfmed_online_merging.json saves/tiny/dpo_onties/sfmed_online_merging.json"
echo "  near-duplicate report: saves/tiny/data/dedup/dedup_report.json removed.jsonl"
echo "  CPT mix: saves/tiny/data/mix/mix_report.md pt_mix.yaml"
echo "  diversification: saves/tiny/data/diversify/{single,multi}/diversify_report.json instructions.jsonl;"
echo "    SFT data with system prompts: saves/tiny/data/diversified/"
echo "  preference stage: saves/tiny/pref/{judge_report.json,selection_report.json,strength_histogram.png,audit.jsonl}"
echo "  evaluation (DPO vs SFT): saves/tiny/eval/report.md report.json report.png"
echo "  memorization audit: saves/tiny/privacy/audit_report.json audit_rouge_l.png high_risk.jsonl;"
echo "    guarded serving: llamafactory-cli chat examples/yaml/tiny/infer_guarded.yaml"
