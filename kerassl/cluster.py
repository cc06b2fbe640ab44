"""Which process this is in a cluster, from TF_CONFIG or SLURM's environment (no TensorFlow:
the CLI asks before TensorFlow loads)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from kerassl.errors import UserError


def slurm_workers(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("SLURM_NTASKS", "1"))


def tf_config_workers(environ: Mapping[str, str] = os.environ) -> int:
    try:
        config = json.loads(environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise UserError("TF_CONFIG is not valid JSON") from None
    return len(config.get("cluster", {}).get("worker", []))


def is_chief(environ: Mapping[str, str] = os.environ) -> bool:
    """True on the worker that writes the run directory (worker 0, or the only one)."""
    try:
        task = json.loads(environ.get("TF_CONFIG", "{}")).get("task", {})
    except json.JSONDecodeError:
        return True
    if task:
        return task.get("type") in ("chief", None) or (
            task.get("type") == "worker" and int(task.get("index", 0)) == 0
        )
    return int(environ.get("SLURM_PROCID", "0")) == 0


def slurm_job(environ: Mapping[str, str] = os.environ) -> str | None:
    """The SLURM job this process belongs to ("1234", or "1234_7" for task 7 of an array
    job), None outside SLURM. A requeued job keeps its id, so a run named after it resumes."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environ.get("SLURM_JOB_ID") or None
