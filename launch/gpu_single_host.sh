#!/usr/bin/env bash
# One host, N GPUs: one generate.py process driving every GPU through a device mesh.
#
#   launch/gpu_single_host.sh data  outputs/run.jsonl --method=costeer --task=helpsteer --preference=concise
#   launch/gpu_single_host.sh model outputs/run.jsonl --method=costeer --llm=/models/Qwen2.5-7B-Instruct ...
#
# data:  each GPU holds a full copy of the weights and decodes batch_size/N rows (throughput;
#        the default when the model fits on one GPU). --batch_size must be a multiple of N.
# model: weights and KV cache are split over the GPUs (a model too big for one GPU); query heads,
#        kv heads and mlp width should divide N, else those weights are replicated (logged).
# Mixed meshes are one flag away: MESH=data:2,model:4 launch/gpu_single_host.sh custom out.jsonl ...
#
# Env: NUM_GPUS (default: nvidia-smi -L count), PYTHON (default .venv/bin/python), BATCH_PER_GPU
# (default 8, for the data layout), MESH (with layout 'custom'). Needs a CUDA jax in the venv:
#   .venv/bin/pip install -U "jax[cuda12]"
set -euo pipefail

layout=${1:?usage: $0 data|model|custom OUTPUT.jsonl [generate.py flags...]}
output=${2:?usage: $0 data|model|custom OUTPUT.jsonl [generate.py flags...]}
shift 2

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
NUM_GPUS=${NUM_GPUS:-$(nvidia-smi -L | wc -l)}
if [ "$NUM_GPUS" -lt 1 ]; then echo "no GPUs visible (nvidia-smi -L is empty)" >&2; exit 1; fi

# Let XLA take GPU memory as it needs it instead of preallocating 75% per process, so the
# KV cache size, not a fixed fraction, decides what fits.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

case "$layout" in
  data)   mesh="data:${NUM_GPUS}"; extra=(--batch_size=$(( ${BATCH_PER_GPU:-8} * NUM_GPUS ))) ;;
  model)  mesh="model:${NUM_GPUS}"; extra=() ;;
  custom) mesh=${MESH:?set MESH, e.g. MESH=data:2,model:4}; extra=() ;;
  *) echo "layout must be data, model or custom (got '$layout')" >&2; exit 2 ;;
esac

set -x
# Flags given after OUTPUT come last, so an explicit --batch_size overrides the default above.
exec "$PYTHON" experiments/generate.py --mesh="$mesh" --output="$output" "${extra[@]}" "$@"
