"""Whether the whole train step is XLA-compiled: `--xla auto` decided by measuring.

Whole-step XLA was 0.76x on one of this project's 2-core CPUs (AVX-512) and 1.24x on
another (AVX2), so "auto" times both forms of the step on this machine (after
compilation, `kerassl.pretraining.measure_step_seconds`), keeps the faster and caches the
decision in `<Keras home>/kerassl/xla.json`, keyed on what changes the answer (CPU model,
flags and cores, TensorFlow version, method, encoder, head, preset, input shape, batch,
replicas, device, precision), so that later runs pay nothing.

`choose` is the rule, with the timing function and the cache directory passed in (tested
with a fake timer); `choose_for_plan` applies it to a `Plan` on this machine. The order:

1. several replicas: off (XLA does not compile cross-replica collectives on CPU devices);
2. `--xla on` / `off`: forced;
3. the choice the run directory records (a continued run): reused as it was made;
4. on a GPU: on, unmeasured;
5. `--deterministic`: the fixed rule (off on CPU), since a timing may come out either
   way and the weights would then depend on it;
6. a short run (fewer than `SHORT_RUN_STEPS` steps, or a `--time-budget` under
   `SHORT_BUDGET_SECONDS`): the fixed rule, unmeasured and the cache unread;
7. the cached decision for this key;
8. else measured and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Measuring costs two throwaway models, each traced and compiled, and 8 steps of each
# form: 94 s for the default SimCLR (6-conv CNN, batch 256, 28 px, kNN monitor) on this
# project's 2-core AMD EPYC under load (54 GFLOP/s matmul; steps 2.54 s plain, 3.26 s
# XLA), i.e. 37 steps. A run of fewer than 100 steps could win back at most ~19 of them
# even from a 1.24x faster form, so it keeps the fixed rule; a longer run measures once
# per key (breaking even on its own from ~190 steps) and every later run reads the cache.
SHORT_RUN_STEPS = 100
# The same for a --time-budget run, whose step count is only known after measuring:
# under 15 minutes those ~94 s would be more than a tenth of the budget.
SHORT_BUDGET_SECONDS = 900.0

CACHE_FILE = "xla.json"  # under <cache_dir>/kerassl/

# How the choice was made (config.json "xla" → "how").
REPLICAS = "several replicas"
FORCED = "forced"
RECORDED = "recorded"
GPU = "GPU"
DETERMINISTIC = "deterministic"
SHORT_RUN = "short run"
CACHED = "cached"
MEASURED = "measured"


@dataclass(frozen=True)
class XLAChoice:
    """Whether the train step is XLA-compiled, how that was decided and, when it was
    measured (now or for the cached decision), the seconds per step of each form.

    Attributes:
        jit_compile: whether the whole train step is XLA-compiled.
        how: one of "several replicas", "forced", "recorded", "GPU", "deterministic",
            "short run", "cached", "measured".
        step_seconds: {"xla": s, "plain": s} when measured, else None.
        timings: the `StepTiming` of each form (`True`: XLA) when measured in this
            process (a `--time-budget` reuses the chosen form's); not written anywhere.
    """

    jit_compile: bool
    how: str
    step_seconds: dict[str, float] | None = None
    timings: dict[bool, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {"jit_compile": self.jit_compile, "how": self.how}
        if self.step_seconds is not None:
            values["step_seconds"] = self.step_seconds
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> XLAChoice:
        """A recorded choice, as it was made (how: "recorded" when the record says not)."""
        return cls(
            bool(values["jit_compile"]), values.get("how", RECORDED), values.get("step_seconds")
        )


def fixed_rule(gpu: bool) -> bool:
    """The rule "auto" falls back on when it does not measure: XLA only on a GPU."""
    return gpu


def choose(
    setting: bool | str,
    *,
    replicas: int,
    gpu: bool,
    key: dict[str, Any],
    cache_dir: str | Path | None,
    time_form: Callable[[bool], Any],
    steps: int | None = None,
    budget_seconds: float | None = None,
    recorded: dict[str, Any] | None = None,
    deterministic: bool = False,
) -> XLAChoice:
    """The XLA choice of a run (the order is the module's docstring's).

    Args:
        setting: `--xla`: True, False or "auto".
        replicas: replicas of the run's strategy.
        gpu: whether the run has a GPU.
        key: what the answer depends on (`cache_key`); the cache's key.
        cache_dir: the directory under which `kerassl/xla.json` is kept (Keras' home);
            None: no cache (measure every time).
        time_form: `time_form(jit_compile)` times the step of one form; returns an
            object with `.step` (seconds per step), e.g. a `StepTiming`.
        steps: the run's pretraining steps (None for a `--time-budget` run).
        budget_seconds: the `--time-budget` in seconds, if any.
        recorded: the "xla" entry of a continued run's config.json.
        deterministic: `--deterministic`.
    """
    if replicas > 1:
        return XLAChoice(False, REPLICAS)
    if setting != "auto":
        return XLAChoice(bool(setting), FORCED)
    if recorded is not None:
        return XLAChoice.from_json(recorded)
    if gpu:
        return XLAChoice(True, GPU)
    if deterministic:
        return XLAChoice(fixed_rule(gpu), DETERMINISTIC)
    if is_short(steps, budget_seconds):
        return XLAChoice(fixed_rule(gpu), SHORT_RUN)
    path = None if cache_dir is None else Path(cache_dir) / "kerassl" / CACHE_FILE
    digest = _digest(key)
    cached = _read_cache(path).get(digest) if path is not None else None
    if cached is not None:
        return XLAChoice(bool(cached["jit_compile"]), CACHED, cached.get("step_seconds"))
    timings = {on: time_form(on) for on in (False, True)}  # the fixed rule's form first
    seconds = {"xla": round(timings[True].step, 4), "plain": round(timings[False].step, 4)}
    choice = XLAChoice(timings[True].step < timings[False].step, MEASURED, seconds, timings)
    if path is not None:
        _write_cache(path, digest, {"key": key, **choice.to_json()})
    return choice


def is_short(steps: int | None, budget_seconds: float | None = None) -> bool:
    """Whether a run is too short to be worth measuring both forms of its step."""
    if budget_seconds is not None:
        return budget_seconds < SHORT_BUDGET_SECONDS
    return steps is not None and steps < SHORT_RUN_STEPS


def cpu_signature() -> dict[str, Any]:
    """This machine's CPU as far as the XLA answer goes: model, a hash of its feature
    flags (AVX2, AVX-512, AMX... decide which kernels run) and the cores this process
    may use."""
    model, flags = None, ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and model is None:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:  # x86, ARM
                    flags = " ".join(sorted(value.split()))
    except OSError:  # not Linux: the platform's name for it
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": cores,
        "machine": platform.machine(),
    }


def cache_key(
    *,
    method: str,
    encoder: str,
    head: str,
    preset: str,
    input_shape,
    batch_size: int,
    replicas: int,
    device: str,
    precision: str,
    tensorflow: str,
    cpu: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the faster form depends on: the machine, the TensorFlow version and the
    step's work."""
    return {
        "cpu": cpu if cpu is not None else cpu_signature(),
        "tensorflow": tensorflow,
        "method": method,
        "encoder": encoder,
        "head": head,
        "preset": preset,
        "input_shape": [int(n) for n in input_shape],
        "batch_size": int(batch_size),
        "replicas": int(replicas),
        "device": device,
        "precision": precision,
    }


def choose_for_plan(
    plan, strategy=None, recorded: dict[str, Any] | None = None, cache_dir=None
) -> XLAChoice:
    """`choose` for a `Plan` on this machine, each form timed by `measure_step_seconds`
    as the run's `fit` runs it; the cache under `cache_dir`, by default Keras' home
    directory (`$KERAS_HOME`, else `~/.keras`, as Keras resolves it)."""
    import dataclasses

    import tensorflow as tf
    from keras.src.backend.config import keras_home

    from kerassl.checks import parse_duration
    from kerassl.pretraining import measure_step_seconds

    config = plan.config
    gpu = bool(tf.config.list_logical_devices("GPU"))
    key = cache_key(
        method=config.method,
        encoder=config.encoder,
        head=config.head,
        preset=plan.preset,
        input_shape=plan.data.image_shape,
        batch_size=config.batch_size,
        replicas=plan.replicas,
        device="GPU" if gpu else "CPU",
        precision=config.precision,  # the policy the method is built under (--precision)
        tensorflow=tf.__version__,
    )
    budget = None if config.time_budget is None else parse_duration(config.time_budget)
    return choose(
        config.jit_compile,
        replicas=plan.replicas,
        gpu=gpu,
        key=key,
        cache_dir=cache_dir if cache_dir is not None else keras_home(),
        time_form=lambda on: measure_step_seconds(
            dataclasses.replace(plan, jit_compile=on), strategy
        ),
        steps=None if budget is not None else plan.total_steps,
        budget_seconds=budget,
        recorded=recorded,
        deterministic=config.deterministic,
    )


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached decisions; an unreadable or malformed file counts as empty."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _write_cache(path: Path, digest: str, entry: dict[str, Any]) -> None:
    """Adds `entry` to the cache atomically; a cache that cannot be written (read-only
    home) only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        values = _read_cache(path) | {digest: entry}
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".xla-", suffix=".tmp", delete=False
        ) as tmp:
            json.dump(values, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)
    except OSError:
        pass
