"""The resources Spark gives a task: its cores and, on GPU executors, its GPU.

With `spark.task.resource.gpu.amount` set, each task carries the address of the GPU Spark
assigned it (`TaskContext.resources()["gpu"]`), from the discovery script's list (CUDA ordinals,
as `nvidia-smi` numbers them). A Python worker pins itself to the GPU of its first task before any
framework starts (`CUDA_VISIBLE_DEVICES`), so it holds one CUDA context and one model on one GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

# Modules that open CUDA contexts once imported and used: the GPU must be chosen before them.
_FRAMEWORKS = ("tensorflow", "jax", "onnxruntime", "torch")
_pinned: str | None = None  # the GPU address this worker was pinned to


@dataclass(frozen=True)
class TaskResources:
    """What Spark gave the running task; outside Spark, one core and no GPU."""

    cpus: int = 1
    gpu: str | None = None  # the GPU address Spark assigned, as the discovery script gave it


def task_resources() -> TaskResources:
    try:
        from pyspark import TaskContext
    except ImportError:  # the partition function run without Spark (benchmarks/device.py)
        return TaskResources()
    context = TaskContext.get()
    if context is None:
        return TaskResources()
    gpu = context.resources().get("gpu")
    address = gpu.addresses[0] if gpu is not None and gpu.addresses else None
    return TaskResources(context.cpus(), address)


def gpu_ordinal(address: str | None) -> int | None:
    """The CUDA ordinal, in this process, of the GPU at Spark's `address`; None for none.

    The first GPU task of a worker whose frameworks have not started pins the worker to its
    GPU, which is then ordinal 0. A worker whose frameworks started before (it ran CPU work
    first) sees every GPU and takes the address as the ordinal. A worker pinned to one GPU that
    is later handed another (several GPUs per executor) stays on its own: give executors one GPU
    each, as the recipes of docs/gpus.md do, for one context and one model per GPU.
    """
    global _pinned
    if address is None:
        return None
    if _pinned is None and not any(name in sys.modules for name in _FRAMEWORKS):
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # ordinals as nvidia-smi numbers them
        os.environ["CUDA_VISIBLE_DEVICES"] = address
        # Tasks that share a GPU (task amount < 1) must not each claim its whole memory.
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        _pinned = address
    if _pinned is not None:
        return 0
    if not address.isdigit():
        raise RuntimeError(
            f"GPU address {address!r} is not a CUDA ordinal; make the discovery script print "
            "ordinals, as conf/gpu-discovery.sh does"
        )
    return int(address)
