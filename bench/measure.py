"""Measuring tools of the benchmark: wall time, peak memory of one step, the machine's matmul peak.

Public surface: `Device`, `matmul_peak_flops(device)`, `StepMeasurement`, `measure_call(fn, device,
into)`, `Stopwatch` (the same for a span between two callbacks), `peak_memory_of(fn, device)`,
`PeakMemory` (the same for a span), `prime_optimizer(optimizer)`, `record_text_shapes(model)`,
`others_load()`, `wait_for_idle(max_seconds)`.

Peak memory of a step: on CUDA, `torch.cuda.max_memory_allocated` above what was allocated before
the step. On CPU, the process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`)
above its resident set before the step, after `malloc_trim` gave freed heap pages back to the
system: so it counts what the step itself touches (activations, gradients, temporaries), not the
model and optimiser state already resident. Elsewhere CPU memory is reported as unknown (None).
Trimming makes the next step fault its memory in again, so memory is probed on an untimed step.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from omninegclip.common.memory import _malloc_trim, release_freed_memory


@dataclass(frozen=True)
class Device:
    """Where and in which precision the benchmark runs. `autocast_dtype` None: plain fp32."""

    type: str
    autocast_dtype: torch.dtype | None

    def __post_init__(self):
        if self.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.type!r}")
        if self.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device here (a CPU-only torch build, or no GPU)")

    @property
    def torch(self) -> torch.device:
        return torch.device(self.type)

    @property
    def matmul_dtype(self) -> torch.dtype:
        return self.autocast_dtype or torch.float32

    def synchronize(self) -> None:
        if self.type == "cuda":
            torch.cuda.synchronize()


def matmul_peak_flops(device: Device, size: int | None = None, repeats: int = 4) -> float:
    """The best FLOP/s of a large square `torch.mm` in the device's matmul dtype (fp32 on CPU unless
    autocast is on; bf16 on GPU as asked): the ceiling the training steps are scored against."""
    size = size or (8192 if device.type == "cuda" else 4096)
    generator = torch.Generator(device=device.type).manual_seed(0)
    a = torch.randn(size, size, device=device.torch, dtype=device.matmul_dtype, generator=generator)
    b = torch.randn(size, size, device=device.torch, dtype=device.matmul_dtype, generator=generator)
    torch.mm(a, b)  # warm-up
    timing = StepMeasurement()
    for _ in range(repeats):
        measure_call(lambda: torch.mm(a, b), device, timing)
    return 2 * size**3 / min(timing.seconds)


# ----------------------------------------------------------------------------------------------
# Peak memory of one call
# ----------------------------------------------------------------------------------------------


_MALLOC_TRIM = release_freed_memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        _status_kib("VmHWM")
        return _malloc_trim() is not None
    except OSError:
        return False


_CPU_PEAK = _cpu_peak_supported() if os.name == "posix" else False


class PeakMemory:
    """The peak memory of whatever runs between `start()` and `stop()` (bytes above what was in use
    at `start`; None where unknown): for a span that is no single call, such as one Trainer step
    between two callbacks."""

    def __init__(self, device: Device):
        self.device = device
        self.before: int | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif _CPU_PEAK:
            _MALLOC_TRIM()
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current resident set
            self.before = _status_kib("VmRSS")

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        if _CPU_PEAK:
            return (_status_kib("VmHWM") - self.before) * 1024
        return None


def peak_memory_of(fn: Callable[[], object], device: Device) -> int | None:
    """Run `fn` once (untimed) and return the bytes its peak needed above what was in use before."""
    probe = PeakMemory(device)
    probe.start()
    fn()
    return probe.stop()


def prime_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Allocate the optimiser's state now (one step on zero gradients: only weight decay moves the
    weights, by a factor 1 - lr * wd), so that no measured step pays for it."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def others_load(interval: float = 0.5) -> float | None:
    """How many cores other processes kept busy over the next `interval` seconds (None off Linux)."""
    busy, own = _busy_seconds(), _own_cpu_seconds()
    if busy is None:
        return None
    time.sleep(interval)
    return max(0.0, (_busy_seconds() - busy) - (_own_cpu_seconds() - own)) / interval


def wait_for_idle(max_seconds: float, threshold: float = 0.15) -> float | None:
    """Wait (up to `max_seconds`) until other processes use less than `threshold` cores; return the
    load last seen. The benchmark's numbers are only the machine's when nothing else runs."""
    if max_seconds <= 0:
        return None
    deadline = time.monotonic() + max_seconds
    load = others_load()
    while load is not None and load > threshold and time.monotonic() < deadline:
        load = others_load(1.0)
    return load


@dataclass
class StepMeasurement:
    """Timed calls of one step: wall seconds, and the cores other processes kept busy meanwhile
    (about 0 on an idle machine; more means the time is inflated: with OpenMP threads spinning at
    barriers, a shared core can double a step's time)."""

    seconds: list[float] = field(default_factory=list)
    others_load: list[float | None] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_others_load(self) -> float | None:
        known = [load for load in self.others_load if load is not None]
        return statistics.median(known) if known else None


class Stopwatch:
    """Wall time from `start()` to `stop(into)` (the device synchronised at both ends), with the
    cores other processes used meanwhile: `measure_call` for one call, or a span between two
    Trainer callbacks."""

    def __init__(self, device: Device):
        self.device = device
        self.started: tuple[float | None, float, float] | None = None

    def start(self) -> None:
        self.device.synchronize()
        self.started = (_busy_seconds(), _own_cpu_seconds(), time.perf_counter())

    def stop(self, into: StepMeasurement) -> None:
        self.device.synchronize()
        seconds = time.perf_counter() - self.started[2]
        busy, own, _ = self.started
        into.seconds.append(seconds)
        others = None if busy is None else max(0.0, (_busy_seconds() - busy) - (_own_cpu_seconds() - own)) / seconds
        into.others_load.append(others)
        self.started = None


def measure_call(fn: Callable[[], object], device: Device, into: StepMeasurement) -> None:
    """Run `fn` once, timed (synchronised on CUDA), into `into`, with the cores other processes used meanwhile."""
    watch = Stopwatch(device)
    watch.start()
    fn()
    watch.stop(into)


@contextlib.contextmanager
def record_text_shapes(model):
    """Collect the (sequences, length) of every call into the text encoder while the block runs."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        shapes.append((int(input_ids.shape[0]), int(input_ids.shape[1])))

    handle = model.text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()
