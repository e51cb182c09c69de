#!/usr/bin/env bash
# Spark's GPU discovery script: prints this host's GPUs as Spark expects them,
#   {"name": "gpu", "addresses": ["0", "1", ...]}
# Set it as spark.worker.resource.gpu.discoveryScript (standalone) or
# spark.executor.resource.gpu.discoveryScript (YARN, Kubernetes). The addresses are CUDA
# ordinals in nvidia-smi's order; sparkinfer sets CUDA_DEVICE_ORDER=PCI_BUS_ID to match.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-discovery.sh: nvidia-smi not found: this host has no NVIDIA driver" >&2
    exit 1
fi
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
