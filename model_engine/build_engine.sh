#!/bin/bash
# Runs INSIDE the pinned Triton TensorRT-LLM container (image by digest, see pipeline/container.py).
# Mounts: /weights (Hugging Face checkpoint, read-only), /scripts (this folder, read-only),
#         /out (the only writable place).
# Usage: build_engine.sh FAMILY DTYPE TP_SIZE -- trtllm-build ARGS...
# The stage composes the trtllm-build arguments from mithril.yaml; this script only converts,
# builds and records what it ran with.
set -euo pipefail

if [[ $# -lt 5 || $4 != "--" ]]; then
    echo "usage: build_engine.sh FAMILY DTYPE TP_SIZE -- trtllm-build ARGS..." >&2
    exit 2
fi
family=$1 dtype=$2 tp=$3
shift 4

export HOME=/tmp TMPDIR=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
checkpoint=/tmp/trtllm-checkpoint
mkdir -p /out/engine "$checkpoint"

python3 /scripts/versions.py > /out/versions.json
python3 /scripts/convert_checkpoint.py --family "$family" --model_dir /weights \
    --output_dir "$checkpoint" --dtype "$dtype" --tp_size "$tp"
"$@"
# Greedy token ids for fixed prompts: what auditors compare across rebuilds (one MPI rank per GPU).
fingerprint=(python3 /scripts/fingerprint.py --engine_dir /out/engine --tokenizer_dir /weights)
if [[ $tp -gt 1 ]]; then
    fingerprint=(mpirun --allow-run-as-root -n "$tp" "${fingerprint[@]}")
fi
"${fingerprint[@]}" > /out/fingerprint.json
