"""Compute device choice and bf16 autocast.

bf16 autocast is used only where the hardware has native bf16 arithmetic: on CUDA (Ampere and
later) and on CPUs with AVX-512-BF16 or AMX. Elsewhere bf16 is emulated and slower than fp32, so
``autocast`` is then a no-op rather than a slowdown.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import weakref
from collections.abc import Callable, Iterator

import torch

from .errors import DeviceError, InputError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Device kinds usable in this process, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` into a usable device.

    ``auto`` takes CUDA, then MPS, then CPU. A device that is not usable here raises
    ``DeviceError`` naming it and the devices that are.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = str(name).strip().lower()
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(
            f"unknown device {name!r}: expected one of {', '.join(DEVICE_NAMES)} "
            f"(available here: {', '.join(available)})"
        ) from exc
    if device.type not in available:
        raise DeviceError(
            f"device {name!r} is not available on this machine "
            f"(available here: {', '.join(available)})"
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise DeviceError(
                f"device {name!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
    return device


def _cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def bf16_supported(device: torch.device | str) -> bool:
    """True when bf16 autocast runs natively (and so pays) on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return False


@contextlib.contextmanager
def autocast(device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``enabled`` and supported; otherwise a no-op."""
    device = torch.device(device)
    if enabled and bf16_supported(device):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def use_bf16(device: torch.device, model_channels: int) -> bool:
    """bf16 autocast where it pays: CUDA with bf16, and CPUs with native bf16 for U-Nets of 64+
    base channels. On an AVX-512-BF16 CPU (no AMX) the 32-channel ``cpu`` preset measured 0.87x
    the fp32 speed (GroupNorm and conversions dominate) and a 64-channel one 1.9x."""
    if not bf16_supported(device):
        return False
    return device.type == "cuda" or model_channels >= 64


def cpu_threads(requested: int | None = None) -> int:
    """Intra-op threads for CPU training. ``None``: torch's default, but 1 when the machine is
    already busy (1-minute load average >= cores): OpenMP threads that must wait for each
    other at every op then stall. Measured on 2 shared cores at load ~7: the ``cpu`` preset
    ran at 21 samples/s with 1 thread and 5 with 2 (idle: 61 with 2)."""
    if requested is not None:
        if int(requested) < 1:
            raise InputError(f"num_threads must be a positive integer, got {requested}")
        return int(requested)
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores
    return 1 if busy else torch.get_num_threads()


def _load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


class ThreadTuner:
    """torch's intra-op thread count for a long CPU job, chosen from measured step times and
    chosen again as the machine's load changes.

    Why measure: on a machine shared with other processes, OpenMP threads that must wait for a
    preempted sibling at every op can make two threads several times slower than one, while on an
    idle machine two are nearly twice as fast as one. A load average read once at the start is
    wrong as soon as the load changes. So the job starts on one thread and probes, once its steps
    take ``min_step_s`` or more (below that the count hardly matters, and runs stay
    reproducible): the count in use runs ``probe`` timed steps, then the other candidate (all
    threads, or one) the same after ``warmup`` untimed steps (its OpenMP team forms), dropped at
    its first step slower than ``slowdown`` times the first; the job continues with the faster
    per unit of work. It probes again after ``period_s`` seconds (doubled, up to 4x, while the
    choice holds) or as soon as three steps in a row take ``slowdown`` times longer than the probe
    measured. A probe of more threads is skipped while the load average, less our own threads,
    leaves no core free for them: measured on 2 cores at load 5-7, a two-thread pretraining step
    took as long as six single-thread steps (3.4 against 19-20 samples/s).

    Call ``tick(units)`` as each step starts (``units``: its amount of work, e.g. samples).
    The count in force before is restored when the tuner is dropped.
    """

    def __init__(
        self,
        max_threads: int | None = None,
        probe: int = 2,
        warmup: int = 1,
        period_s: float = 30.0,
        slowdown: float = 2.0,
        min_step_s: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
        load: Callable[[], float] | None = None,
        set_threads: Callable[[int], None] | None = None,
        fixed: bool = False,
    ):
        self._set = set_threads or torch.set_num_threads
        top = max(1, int(max_threads or torch.get_num_threads()))
        self.candidates = [1, top] if top > 1 and not fixed else [top]
        self.probe, self.warmup, self.slowdown = probe, warmup, slowdown
        self.min_step_s = min_step_s
        self.period_s, self.wait_s = period_s, period_s
        self.clock = clock
        self.load = load or _load_average
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.cores = len(cores) if cores else os.cpu_count() or 1
        self.threads: int | None = None
        self.plan: list[tuple[int, bool]] = []  # (threads, timed) of the coming probe steps
        self.times: dict[int, list[float]] = {}
        self.reference, self.until, self.slow = math.inf, math.inf, 0  # until a long step
        self.prev: tuple[float, float, int, bool] | None = None
        self.chosen: list[int] = []  # every choice made, for reports
        self.plan_order: list[int] = self.candidates
        if set_threads is None:
            weakref.finalize(self, torch.set_num_threads, torch.get_num_threads())

    @classmethod
    def for_device(cls, device: torch.device, num_threads: int | None = None, **kw) -> ThreadTuner:
        """Adaptive on a CPU unless ``num_threads`` fixes the count; elsewhere it leaves the count
        alone (the host threads only feed the accelerator)."""
        if device.type != "cpu":
            return cls(max_threads=1, set_threads=lambda n: None, **kw)
        if num_threads is not None:
            return cls(max_threads=cpu_threads(num_threads), **kw, fixed=True)
        return cls(**kw)

    @property
    def adaptive(self) -> bool:
        return len(self.candidates) > 1

    def tick(self, units: float = 1.0) -> int:
        """A step of ``units`` work starts now: time the previous one, set and return the count."""
        now = self.clock()
        if self.prev is not None:
            start, done, threads, timed = self.prev
            if not self.chosen and not self.plan and now - start >= self.min_step_s:
                self.until = -math.inf  # steps worth tuning: probe now
            self._observe((now - start) / max(done, 1e-12), threads, timed)
        threads, timed = self._next(now)
        if threads != self.threads:
            self._set(threads)
            self.threads = threads
        self.prev = (now, units, threads, timed)
        return threads

    def _room_for(self, threads: int) -> bool:
        """Whether the cores others leave idle (by the load average) fit ``threads``."""
        others = self.load() - (self.threads or 1)
        return others + threads <= self.cores + 0.5

    def _observe(self, per_unit: float, threads: int, timed: bool) -> None:
        if self.plan or self.times:  # probing
            first = self.plan_order[0]
            if threads != first and self.times.get(first):
                if per_unit > self.slowdown * statistics.median(self.times[first]):
                    self.plan = [(c, t) for c, t in self.plan if c != threads]  # clearly worse
                    self.times.setdefault(threads, []).append(per_unit)
                    return
            if timed:
                self.times.setdefault(threads, []).append(per_unit)
        elif self.reference < math.inf:
            self.slow = self.slow + 1 if per_unit > self.slowdown * self.reference else 0

    def _next(self, now: float) -> tuple[int, bool]:
        if not self.adaptive:
            return self.candidates[0], False
        if self.plan:
            return self.plan.pop(0)
        if self.times:  # the probe just ended: keep the fastest
            medians = {c: statistics.median(t) for c, t in self.times.items() if t}
            best = min(medians, key=medians.__getitem__)
            held = bool(self.chosen) and best == self.chosen[-1]
            self.wait_s = min(2 * self.wait_s, 4 * self.period_s) if held else self.period_s
            self.chosen.append(best)
            self.reference, self.until = medians[best], now + self.wait_s
            self.slow, self.times = 0, {}
            return best, False
        if now >= self.until or self.slow >= 3:
            if not self._room_for(self.candidates[-1]):
                self.chosen.append(1)
                self.reference, self.until, self.slow = math.inf, now + self.period_s, 0
                return 1, False
            current = self.chosen[-1] if self.chosen else self.candidates[0]
            self.plan_order = [current] + [c for c in self.candidates if c != current]
            self.plan = [(current, True)] * self.probe + [
                (c, timed)
                for c in self.plan_order[1:]
                for timed in [False] * self.warmup + [True] * self.probe
            ]
            return self.plan.pop(0)
        return self.chosen[-1] if self.chosen else self.candidates[0], False
