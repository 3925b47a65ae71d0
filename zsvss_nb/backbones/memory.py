"""How many samples one model call takes: batch plans from the device's free memory.

``upsample.modulation_batch = "auto"`` (and ``decode_batch = "auto"``) size the modulated
passes' UNet batches and the VAE decode chunks from the memory the device has free
(:func:`free_bytes`: ``torch.cuda.mem_get_info`` plus what torch's caching allocator holds
unused on CUDA, the available RAM on the CPU) and a per-unit footprint measured once per model
and shape (:class:`LiveBytes` over the first call, which runs one unit), with a safety margin.
An out-of-memory error in a batch halves it and runs the same units again (logged once per
plan); batches never change results (every unit is computed independently of the others in its
call, tests/test_bench.py and tests/test_upsample.py check labels are identical).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

log = logging.getLogger(__name__)

AUTO = "auto"
SAFETY = 0.5  # share of the free memory a plan may fill: allocator slack, workspaces, others


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), or the plain RuntimeError of the CPU and MPS allocators."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def cpu_available_bytes() -> int | None:
    """Available RAM (psutil, else Linux ``MemAvailable``), or None when neither can tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def free_bytes(device: torch.device | str) -> int | None:
    """Memory a new allocation on ``device`` can use, or None where it cannot be told (MPS).

    CUDA: the driver's free memory plus what torch's caching allocator reserved but does not
    use (it hands that out first); the CPU: the available RAM.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        return cpu_available_bytes()
    return None


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors the operators inside the ``with`` block create and keep alive.

    Device-independent (it counts storages, not what an allocator reserved), so the CPU and
    CUDA measure a footprint the same way and the CUDA peak-memory statistics stay untouched.
    Tensors that existed before the block (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self._live.get(key)
        if entry is None:
            if key == 0 or key in inputs:  # in place, or a view of a tensor made before
                return
            entry = self._live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1  # a view keeps its base's storage alive
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf, inputs)
        return out


@dataclass
class BatchPlanner:
    """Units per model call for one kind of work (``key``), fixed or planned from memory.

    ``fixed``: an integer from the config (0 = everything in one call), or None for "auto".
    ``footprints``: the backbone's store of measured bytes per unit, keyed by ``key`` (model
    call kind and shape), so a footprint is measured once per model and size. ``budget``
    returns the free bytes (injectable; default :func:`free_bytes` of ``device``).
    """

    device: torch.device
    key: tuple
    footprints: dict[tuple, float]
    fixed: int | None = None
    budget: Callable[[], int | None] | None = None
    margin: float = SAFETY
    fallback: int = 8  # units per call where the free memory cannot be told
    halvings: int = field(default=0, init=False)
    measuring: bool = field(default=False, init=False)  # True during the measured call

    def free(self) -> int | None:
        return self.budget() if self.budget is not None else free_bytes(self.device)

    def planned(self, total: int) -> int:
        """Units per call for ``total`` units, from the fixed size or the footprint."""
        if self.fixed is not None:
            return total if self.fixed == 0 else min(self.fixed, total)
        per_unit = self.footprints.get(self.key)
        if per_unit is None:
            return 1  # the first call measures the footprint on one unit
        free = self.free()
        if free is None:
            return min(self.fallback, total)
        return int(min(max(1, self.margin * free // max(per_unit, 1.0)), total))

    def run(self, total: int, call: Callable[[int, int], None]) -> None:
        """``call(lo, hi)`` for consecutive unit ranges covering ``range(total)``.

        A call that runs out of memory is repeated on half as many units (at least one);
        the smaller size is kept for the rest and, for "auto", in the footprint.
        """
        lo = 0
        size = self.planned(total)
        while lo < total:
            hi = min(total, lo + size)
            measure = self.fixed is None and self.key not in self.footprints
            try:
                if measure:
                    self.measuring = True
                    try:
                        with LiveBytes() as live:
                            call(lo, hi)
                    finally:
                        self.measuring = False
                    self.footprints[self.key] = live.peak / (hi - lo)
                    size = self.planned(total)
                else:
                    call(lo, hi)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not is_out_of_memory(err) or hi - lo == 1:
                    raise
                size = max(1, (hi - lo) // 2)
                self._shrunk(hi - lo, size)
                continue
            lo = hi

    def _shrunk(self, tried: int, size: int) -> None:
        if self.halvings == 0:
            log.warning(
                "out of memory on %s for %d units of %s per call: retrying with %d "
                "(results do not depend on the batch)",
                self.device,
                tried,
                self.key[0],
                size,
            )
        self.halvings += 1
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        if self.fixed is None:
            free = self.free()
            if free is not None:  # plan no more than ``size`` units from now on
                self.footprints[self.key] = max(
                    self.footprints.get(self.key, 0.0), self.margin * free / size
                )
        else:
            self.fixed = size
