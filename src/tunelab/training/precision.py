"""Precision by measurement: bfloat16 only where this machine trains faster with it.

CPUs with native bfloat16 (AVX-512 BF16, AMX) train a CNN about a fifth faster in
`mixed_bfloat16`; CPUs without it emulate bfloat16 and train several times *slower*
(measured: 63 against 408 images/s on an AVX2-only machine). `precision: auto` therefore times a
few training steps of a representative model in both precisions on this machine and picks
bfloat16 only when it is measurably faster (by `MARGIN`).

A measurement is a handful of `train_on_batch` calls on synthetic images of the experiment's
shape: a few seconds, cached in the data folder per machine (CPU model and flags, the CPUs this
process may use, the accelerator), TensorFlow version, model and precision. Cached speeds only
seed the first estimates: every training measures its own steps (`tunelab.training.deadline`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

FLOAT32, BFLOAT16 = "float32", "mixed_bfloat16"
AUTO = "auto"
MARGIN = 1.05  # bfloat16 must train at least 5 % more images per second to be chosen
# a cached speed measured this much faster or slower than now was taken under another load
STALE = 1.2
WARMUP_STEPS = 2  # the first calls trace and compile the training function
MIN_STEPS = 3
MIN_SECONDS = 1.0  # time at least this long (and MIN_STEPS) after the warm-up
MAX_SECONDS = 8.0  # ... but no longer than this (emulated bfloat16 is slow)
CACHE_FILE = "speeds.json"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class Speeds:
    """Training images per second of one model in float32 and in mixed bfloat16."""

    float32: float
    bfloat16: float

    def of(self, precision: str) -> float:
        return self.bfloat16 if precision == BFLOAT16 else self.float32

    @property
    def faster(self) -> str:
        """The precision to train in: bfloat16 only when measurably faster."""
        return BFLOAT16 if self.bfloat16 >= MARGIN * self.float32 else FLOAT32

    def describe(self) -> str:
        return f"float32 {self.float32:.0f} images/s, bfloat16 {self.bfloat16:.0f} images/s"


@dataclass(frozen=True)
class PrecisionChoice:
    """What a sweep trains in, why, and the speeds it was decided on."""

    requested: str  # auto, float32 or mixed_bfloat16 (the experiment file)
    precision: str  # float32 or mixed_bfloat16
    speeds: Speeds
    machine: str

    def note(self) -> str | None:
        """One line worth saying about the choice, or None."""
        ratio = self.speeds.float32 / max(self.speeds.bfloat16, 1e-9)
        if self.requested == BFLOAT16 and self.speeds.faster == FLOAT32:
            return (
                f"precision mixed_bfloat16 (as the experiment says) measured {ratio:.1f}x slower "
                f"than float32 on this machine ({self.speeds.describe()}); `precision: auto` "
                "would train in float32"
            )
        if self.requested == AUTO:
            return f"precision auto: {self.precision} ({self.speeds.describe()} on {self.machine})"
        return None


def machine_key() -> str:
    """What the speeds depend on: CPU model and flags, usable CPUs, accelerators, TensorFlow."""
    import tensorflow as tf

    model, wanted, cpus = _cpu_facts()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    device = f"{len(gpus)} GPU" if gpus else f"{cpus} CPU"
    return f"{model} ({wanted}; {device}; TensorFlow {tf.__version__})"


def cpu_description() -> str:
    """This CPU as every figure is labelled with: its model, the flags that decide bfloat16's
    speed (`CPU_FLAGS`) and the CPUs this process may use (no TensorFlow needed)."""
    model, wanted, cpus = _cpu_facts()
    return f"{model} ({wanted}; {cpus} CPU)"


def _cpu_facts() -> tuple[str, str, int | None]:
    """The CPU model, its flags among `CPU_FLAGS` (as text), and the CPUs this process may use."""
    model, flags = _cpu()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return model, ", ".join(f for f in CPU_FLAGS if f in flags) or "no avx2", cpus


def _cpu() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = platform.machine(), set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def images_per_second(
    build: Callable[[str], Any],
    precision: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
) -> float:
    """Training images per second of the model `build(precision)` returns (compiled).

    Synthetic pixels and labels of the data's shape; the first calls (tracing) are not timed.
    """
    from tunelab.training.session import fresh_session

    fresh_session()
    model = build(precision)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(batch_size, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, size=(batch_size,)).astype("int32")
    for _ in range(WARMUP_STEPS):
        model.train_on_batch(x, y)
    steps, started = 0, time.perf_counter()
    while True:
        model.train_on_batch(x, y)
        steps += 1
        elapsed = time.perf_counter() - started
        if (steps >= MIN_STEPS and elapsed >= MIN_SECONDS) or elapsed >= MAX_SECONDS:
            break
    fresh_session()
    return steps * batch_size / elapsed


class SpeedCache:
    """Measured speeds by (machine, model, precision), kept in a JSON file."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / CACHE_FILE

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, key: str) -> float | None:
        return self._read().get(key)

    def put(self, key: str, value: float) -> None:
        data = self._read()
        data[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
            temporary.replace(self.path)
        except OSError:
            pass  # a read-only cache only costs a measurement next time


def cache_key(machine: str, model_key: str, precision: str) -> str:
    digest = hashlib.sha256(f"{machine}|{model_key}|{precision}".encode()).hexdigest()[:20]
    return f"{precision}:{digest}"


@dataclass(frozen=True)
class SpeedProbe:
    """Measures (or recalls) a model's training speed on this machine."""

    build: Callable[[str], Any]  # precision -> compiled keras model
    model_key: str  # identifies the model (its config), for the cache
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    cache_folder: Path

    def speed(self, precision: str, *, machine: str | None = None, fresh: bool = False) -> float:
        """Images per second in `precision`: cached, unless `fresh` (then measured and cached)."""
        machine = machine or machine_key()
        cache = SpeedCache(self.cache_folder)
        key = cache_key(machine, self.model_key, precision)
        known = None if fresh else cache.get(key)
        if known is not None:
            return known
        measured = images_per_second(
            self.build, precision, self.input_shape, self.num_classes, self.batch_size
        )
        cache.put(key, measured)
        return measured

    def speeds(self) -> tuple[Speeds, str]:
        """Both precisions' speeds and the machine key. The faster one is measured again (it is
        what the first estimates of this launch use); the slower one comes from the cache only
        while the faster one measures within `STALE` of its cached figure: otherwise the
        machine was busier (or quieter) when the cache was written, and both are measured."""
        machine = machine_key()
        cache = SpeedCache(self.cache_folder)
        cached = {p: cache.get(cache_key(machine, self.model_key, p)) for p in (FLOAT32, BFLOAT16)}
        if all(v is not None for v in cached.values()):
            both = Speeds(float(cached[FLOAT32] or 0), float(cached[BFLOAT16] or 0))
            fresh = self.speed(both.faster, machine=machine, fresh=True)
            if 1 / STALE <= fresh / both.of(both.faster) <= STALE:
                if both.faster == BFLOAT16:
                    return replace(both, bfloat16=fresh), machine
                return replace(both, float32=fresh), machine
            slower = FLOAT32 if both.faster == BFLOAT16 else BFLOAT16
            again = self.speed(slower, machine=machine, fresh=True)
            if both.faster == BFLOAT16:
                return Speeds(again, fresh), machine
            return Speeds(fresh, again), machine
        return (
            Speeds(
                self.speed(FLOAT32, machine=machine, fresh=True),
                self.speed(BFLOAT16, machine=machine, fresh=True),
            ),
            machine,
        )

    def choose(self, requested: str) -> PrecisionChoice:
        """Decide the precision for `requested` (auto, float32, mixed_bfloat16)."""
        speeds, machine = self.speeds()
        precision = speeds.faster if requested == AUTO else requested
        return PrecisionChoice(requested, precision, speeds, machine)
