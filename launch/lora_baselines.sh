#!/usr/bin/env bash
# The fine-tuned baselines end to end on SmolLM2 (LLM = SLM = smollm2-135m-instruct): a LoRA on each
# user's LongLaMP-writing history (SpecSteer B.3/B.5 split), then sft, proxy_tuning and SpecSteer with
# the adapter as SLM+ beside the untrained methods, on the 6 query rows (never trained on), 128
# tokens greedy, scored with ROUGE-1/L and METEOR. Every step is resumable: rerun to continue.
#   bash launch/lora_baselines.sh [OUT=outputs/lora_baselines]
set -euo pipefail
OUT=${1:-outputs/lora_baselines}
PY=${PYTHON:-.venv/bin/python}
TASK=longlamp_writing
TRAIN=${TRAIN:-$OUT/train}  # the training run folder (resumed; an existing finished run is reused)
mkdir -p "$OUT"
$PY experiments/train_lora.py --model=smollm2-135m-instruct --recipe=specsteer_history --task=$TASK \
    --epochs=1 --learning_rate=3e-4 --rows_per_batch=1 --max_len=1024 --eval_every=20 --save_every=20 \
    --output_dir="$TRAIN" --progress=false | tail -1 | tee "$OUT/train.json"
A="$TRAIN/adapter"
run() {  # name, flags...
  local name=$1; shift
  $PY experiments/generate.py --task=$TASK --max_new_tokens=128 --batch_size=6 --progress=false \
      --output="$OUT/$name.jsonl" "$@" | tail -1 > "$OUT/$name.figures.json"
}
run llm_wo --method=llm_wo
run slm_w --method=slm_w
run costeer --method=costeer
run specsteer --method=specsteer
run sft --method=sft --slm_sft="$A"
run proxy_tuning --method=proxy_tuning --slm_sft="$A"
run specsteer_lora --method=specsteer --slm_plus="$A"
run specsteer_lora_rag --method=specsteer --slm_plus="$A" --slm_plus_context
$PY experiments/evaluate.py --task=$TASK --metrics=rouge,meteor --output="$OUT/results.json" \
    --predictions="$OUT/llm_wo.jsonl,$OUT/slm_w.jsonl,$OUT/costeer.jsonl,$OUT/specsteer.jsonl,$OUT/sft.jsonl,$OUT/proxy_tuning.jsonl,$OUT/specsteer_lora.jsonl,$OUT/specsteer_lora_rag.jsonl" \
    --labels=llm_wo,slm_w,costeer,specsteer,sft,proxy_tuning,specsteer_lora,specsteer_lora_rag
cat "$OUT/results.md"
