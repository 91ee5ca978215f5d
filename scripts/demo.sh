#!/usr/bin/env bash
# Sets everything up, then runs the SF-Med demo pipeline on the embedded tiny model:
#   tiny model -> continued pre-training -> SFT -> DPO with online merging (OnDARE, then OnTIES)
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
sfmed data dedup examples/yaml/tiny/dedup.yaml  # near-duplicates of the bundled SFT data, report only
sfmed tiny-model examples/yaml/tiny/tiny_model.yaml
llamafactory-cli train examples/yaml/tiny/pt.yaml
llamafactory-cli train examples/yaml/tiny/sft.yaml
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
echo "  evaluation (DPO vs SFT): saves/tiny/eval/report.md report.json report.png"
echo "  memorization audit: saves/tiny/privacy/audit_report.json audit_rouge_l.png high_risk.jsonl;"
echo "    guarded serving: llamafactory-cli chat examples/yaml/tiny/infer_guarded.yaml"
