"""Target profiles: named sets of thread count, CPU pinning and delegate to measure under.

==================  ======  =======================  ===============================  =========
profile             where   threads                  CPUs                             delegate
==================  ======  =======================  ===============================  =========
``desktop``         here    ``--threads``, else all  not pinned                       XNNPACK
                            usable cores
``mobile-big``      here    1                        pinned to the fastest core       XNNPACK
``mobile-little``   here    1                        pinned to the slowest core       XNNPACK
``android``         adb     ``--threads``, else 1    not pinned (the phone decides)   XNNPACK
``arm64-emulated``  qemu    1                        a Cortex-A76 CPU model           XNNPACK
``arm64-emulated-a55``      qemu  1                  a Cortex-A55 CPU model           XNNPACK
==================  ======  =======================  ===============================  =========

"Fastest" and "slowest" are read from ``/sys/devices/system/cpu/cpuN/cpu_capacity``
(ARM big.LITTLE), else ``cpufreq/cpuinfo_max_freq``. Where every core is the
same (an x86 desktop), ``mobile-big`` takes the highest-numbered usable core and
``mobile-little`` the lowest, so on such a machine the two profiles differ only in
which core they use: they emulate a phone's *single-threaded, single-core*
setting, not its speed. Nothing is slowed down artificially. On an aarch64 board
with ``ai-edge-litert`` the same profiles pin to its real big and LITTLE cores.
Where the OS has no affinity call (macOS) the local profiles run unpinned and the
record's ``cpus`` is None.

``android`` pushes the ``.tflite`` file with ``adb`` and runs the official
``benchmark_model`` binary on the phone (see :mod:`runtime_bench.adb`); ``adb``
itself honours ``ANDROID_SERIAL`` to choose among several phones.

``arm64-emulated`` runs each file in an arm64 Python under qemu on this machine
(:mod:`runtime_bench.emulated`): the phone's kernels (XNNPACK's NEON and sparse
paths), checked for parity against Keras and against x86, with the kernels that
ran. It reports no latency: emulated time says nothing about a phone.

    >>> [(t.name, n, t.cpus()) for t, n in plan(["desktop", "mobile-little"], [1, 2])]
    [('desktop', 1, None), ('desktop', 2, None), ('mobile-little', 1, [0])]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from edgecomp.errors import EdgecompError

_SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (its affinity set where the OS has one).

    Example:
        >>> len(usable_cpus()) >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _core_score(cpu: int, sys_cpu: Path) -> float | None:
    for rel in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
        try:
            return float((sys_cpu / f"cpu{cpu}" / rel).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def pick_core(which: str, cpus: Sequence[int] | None = None, sys_cpu: str | os.PathLike = _SYS_CPU) -> int:
    """The fastest (``"big"``) or slowest (``"little"``) core among ``cpus`` (default: usable ones).

    Ties, and machines whose cores report no capacity or frequency, go to the
    highest id for ``big`` and the lowest id for ``little``.

    Example:
        >>> pick_core("little", [0, 1, 2, 3]) in (0, 1, 2, 3)
        True
    """
    if which not in ("big", "little"):
        raise EdgecompError(f"unknown core kind '{which}'", fix="use 'big' or 'little'")
    cpus = sorted(cpus) if cpus is not None else usable_cpus()
    scores = {c: _core_score(c, Path(sys_cpu)) for c in cpus}
    known = {c: s for c, s in scores.items() if s is not None}
    if len(known) != len(cpus) or len(set(known.values())) <= 1:
        return cpus[-1] if which == "big" else cpus[0]
    if which == "big":
        return max(cpus, key=lambda c: (known[c], c))
    return min(cpus, key=lambda c: (known[c], c))


@dataclass(frozen=True)
class Target:
    """Where and how to measure.

    ``kind`` is ``"local"`` (this machine, in a fresh worker), ``"adb"`` (a phone) or
    ``"emulated"`` (arm64 under qemu, on the CPU model ``cpu_model``: ``"a76"`` or ``"a55"``).
    ``threads`` fixes the thread count (None: take the caller's list, else
    ``default_threads``; ``0`` there means all usable cores). ``core`` pins a
    local run to one core: ``"big"``, ``"little"`` or None (no pinning).
    ``xnnpack`` picks LiteRT's default XNNPACK delegate (True) or the built-in
    kernels only (False).
    """

    name: str
    kind: str = "local"
    threads: int | None = None
    default_threads: int = 0
    core: str | None = None
    xnnpack: bool = True
    description: str = ""
    cpu_model: str | None = None
    adb_dir: str = "/data/local/tmp"
    benchmark_binary: str = "/data/local/tmp/benchmark_model"

    @property
    def resolver(self) -> str:
        """The :class:`~runtime_bench.runners.LiteRTRunner` resolver this target uses."""
        return "auto" if self.xnnpack else "builtin"

    def thread_counts(self, requested: Iterable[int] | None = None) -> list[int]:
        """The thread counts to measure: fixed, else ``requested``, else the default."""
        if self.threads is not None:
            return [self.threads]
        counts = [int(t) for t in requested] if requested else []
        if not counts:
            counts = [self.default_threads or len(usable_cpus())]
        if any(t < 1 for t in counts):
            raise EdgecompError(f"thread counts must be >= 1, got {counts}", fix="e.g. --threads 1,2")
        return list(dict.fromkeys(counts))

    def cpus(self) -> list[int] | None:
        """The CPU ids a local run is pinned to, or None (not pinned / not local)."""
        if self.kind != "local" or self.core is None:
            return None
        return [pick_core(self.core)]

    def settings(self, threads: int) -> dict:
        """The measuring settings this target fixes for one thread count."""
        return {"target": self.name, "threads": int(threads), "cpus": self.cpus(),
                "resolver": self.resolver}


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("desktop", description="all usable cores unless --threads says otherwise; not pinned; XNNPACK"),
    Target("mobile-big", threads=1, core="big",
           description="1 thread pinned to the fastest core; XNNPACK (on x86: any one core)"),
    Target("mobile-little", threads=1, core="little",
           description="1 thread pinned to the slowest core; XNNPACK (on x86: same speed as mobile-big)"),
    Target("android", kind="adb", default_threads=1,
           description="a phone over adb: push the .tflite, run /data/local/tmp/benchmark_model "
                       "--num_threads=N --use_xnnpack=true, parse its log"),
    Target("arm64-emulated", kind="emulated", threads=1, cpu_model="a76",
           description="arm64 under qemu 10 on a Cortex-A76 model: parity against Keras and x86, the "
                       "kernels that ran; no latency (emulated time means nothing)"),
    Target("arm64-emulated-a55", kind="emulated", threads=1, cpu_model="a55",
           description="as arm64-emulated, on a Cortex-A55 (little core) model"),
)}


def get_target(target: str | Target) -> Target:
    """A :class:`Target` by name (or the Target itself).

    Example:
        >>> get_target("mobile-little").threads
        1
    """
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[str(target).strip()]
    except KeyError:
        raise EdgecompError(f"unknown target '{target}'", fix=f"use one of: {', '.join(TARGETS)}") from None


def plan(targets: Iterable[str | Target], threads: Iterable[int] | None = None) -> list[tuple[Target, int]]:
    """Every (target, thread count) pair to measure, in order, without repeats.

    Example:
        >>> [(t.name, n) for t, n in plan(["mobile-big", "desktop"], [1, 4])]
        [('mobile-big', 1), ('desktop', 1), ('desktop', 4)]
    """
    resolved = list(dict.fromkeys(get_target(t) for t in targets))
    if not resolved:
        raise EdgecompError("no targets given", fix=f"use one or more of: {', '.join(TARGETS)}")
    thread_list = None if threads is None else list(threads)
    return [(t, n) for t in resolved for n in t.thread_counts(thread_list)]


def cpu_description() -> str:
    """The CPU the figures were measured on, and whether it has int8 dot-product instructions
    (x86 VNNI/AMX, ARM dotprod): XNNPACK's int8 kernels pull ahead of fp32 only with them.

    Example:
        >>> cpu_description()                       # doctest: +SKIP
        'Intel(R) Xeon(R) Processor, 2 CPUs, int8 dot products: avx512_vnni, avx_vnni, amx_int8'
    """
    import platform
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    dot = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, int8 dot products: {', '.join(dot) if dot else 'none'}"
