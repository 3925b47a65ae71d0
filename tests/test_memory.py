"""Batch plans from free memory (backbones/memory.py) and the device-correct modulation loops.

The planner is tested with an injected memory budget and planted per-unit allocations, its
out-of-memory path with injected errors, its CUDA reading with a mocked ``mem_get_info`` (no GPU
here). On the tiny models: labels are identical under every batch plan, an injected OOM halves
the batch without changing them, and the per-step loops never read a tensor back to the host.
"""

import builtins
import logging

import pytest
import torch

import zsvss_nb.backbones.sd.modulation as sd_mod
import zsvss_nb.backbones.svd.modulation as svd_mod
from zsvss_nb.backbones import memory
from zsvss_nb.backbones.memory import BatchPlanner, LiveBytes, free_bytes, is_out_of_memory
from zsvss_nb.config import SegmentConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.features import extract
from zsvss_nb.upsample import modulate

MB = 2**20
CPU = torch.device("cpu")


def _worker(per_unit: int, calls: list, fail_above: int | None = None):
    """A call(lo, hi) that keeps ``per_unit`` bytes per unit alive at once, and raises an
    out-of-memory error for more than ``fail_above`` units."""

    def call(lo: int, hi: int) -> None:
        if fail_above is not None and hi - lo > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        held = [torch.ones(per_unit // 4) for _ in range(hi - lo)]
        calls.append((lo, hi))
        del held

    return call


def _covered(calls: list, total: int) -> bool:
    return [u for lo, hi in calls for u in range(lo, hi)] == list(range(total))


# -- planner --------------------------------------------------------------------------------
def test_live_bytes_counts_the_peak_of_new_tensors_only():
    before = torch.zeros(1000)
    with torch.inference_mode(), LiveBytes() as live:
        a = torch.ones(64, 1024)  # 256 KiB
        b = a * 2  # 512 KiB live
        del a
        view = b.view(-1)[:10]  # no new storage
        before.add_(1)  # in place on a tensor made before: not counted
        c = b + 1  # 512 KiB live again
    assert live.peak == 512 * 1024
    assert live.current == 512 * 1024
    del b, c, view
    assert live.current == 0


def test_first_call_measures_one_unit_then_the_budget_sets_the_batch():
    footprints: dict = {}
    calls: list = []
    planner = BatchPlanner(CPU, ("work", 1), footprints, budget=lambda: 20 * MB)
    planner.run(23, _worker(MB, calls))
    assert calls[0] == (0, 1)  # measured on one unit
    per_unit = footprints[("work", 1)]
    assert MB <= per_unit < 1.2 * MB
    size = int(0.5 * 20 * MB // per_unit)  # SAFETY = 0.5 of the budget
    assert 8 <= size <= 10
    assert [hi - lo for lo, hi in calls[1:-1]] == [size] * (len(calls) - 2)
    assert _covered(calls, 23)
    # measured once per key: a second run plans from the stored footprint at once
    again: list = []
    BatchPlanner(CPU, ("work", 1), footprints, budget=lambda: 4 * MB).run(5, _worker(MB, again))
    assert again == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)] or again[0] == (0, 2)
    assert _covered(again, 5)


def test_budget_bounds_and_fixed_sizes():
    footprints = {("k",): 10 * MB}
    assert BatchPlanner(CPU, ("k",), footprints, budget=lambda: MB).planned(7) == 1
    assert BatchPlanner(CPU, ("k",), footprints, budget=lambda: 10**12).planned(7) == 7
    assert BatchPlanner(CPU, ("k",), footprints, budget=lambda: None).planned(30) == 8
    assert BatchPlanner(CPU, ("k",), footprints, fixed=3).planned(7) == 3
    assert BatchPlanner(CPU, ("k",), footprints, fixed=0).planned(7) == 7


def test_out_of_memory_halves_the_batch_logs_once_and_covers_every_unit(caplog):
    footprints = {("k",): 1.0}  # the plan asks for everything at once
    calls: list = []
    planner = BatchPlanner(CPU, ("k",), footprints, budget=lambda: 10**9)
    with caplog.at_level(logging.WARNING, logger="zsvss_nb.backbones.memory"):
        planner.run(20, _worker(1024, calls, fail_above=3))
    assert _covered(calls, 20)
    assert max(hi - lo for lo, hi in calls) <= 3
    assert [hi - lo for lo, hi in calls][:2] == [2, 2]  # 20 -> 10 -> 5 -> 2
    assert planner.halvings == 3
    assert len([r for r in caplog.records if "out of memory" in r.message]) == 1
    # the footprint now plans no more than the size that fitted
    assert planner.planned(20) <= 2


def test_fixed_batch_halves_too_but_one_unit_and_other_errors_propagate():
    calls: list = []
    planner = BatchPlanner(CPU, ("k",), {}, fixed=8)
    planner.run(8, _worker(1024, calls, fail_above=1))
    assert calls == [(i, i + 1) for i in range(8)] and planner.fixed == 1
    with pytest.raises(torch.OutOfMemoryError):
        BatchPlanner(CPU, ("k",), {}, fixed=1).run(2, _worker(1024, [], fail_above=0))

    def broken(lo, hi):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        BatchPlanner(CPU, ("k",), {}, fixed=4).run(4, broken)
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_free_bytes_cuda_branch_with_mocked_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    # the driver's free memory plus what torch's allocator holds unused
    assert free_bytes("cuda") == 4 * 2**30
    assert free_bytes("cuda:0") == 4 * 2**30
    planner = BatchPlanner(torch.device("cuda"), ("k",), {("k",): 2**28})
    assert planner.planned(100) == 8  # 0.5 * 4 GiB / 256 MiB


def test_free_bytes_cpu_reads_psutil_or_meminfo(monkeypatch):
    import psutil

    assert free_bytes("cpu") > 0
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("V", (), {"available": 123})())
    assert free_bytes("cpu") == 123
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    meminfo = memory.cpu_available_bytes()
    assert meminfo is None or meminfo > 1000
    assert free_bytes("meta") is None


def test_config_takes_auto_or_an_integer():
    cfg = SegmentConfig.tiny()
    assert cfg.upsample.modulation_batch == "auto" and cfg.upsample.decode_batch == "auto"
    assert cfg.replace(modulation_batch=4).upsample.modulation_batch == 4
    assert cfg.override("modulation_batch", "6").upsample.modulation_batch == 6
    assert cfg.override("decode_batch", "auto").upsample.decode_batch == "auto"
    for bad in (-1, "big", True, 2.5):
        with pytest.raises(ConfigError, match="modulation_batch"):
            cfg.replace(modulation_batch=bad)


# -- on the tiny models ---------------------------------------------------------------------
B, S = 3, 128


@pytest.fixture(scope="module")
def feats(tiny):
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8)
    return extract(tiny, frames, SegmentConfig.tiny())


def _coarse() -> torch.Tensor:
    c = torch.zeros(B, 8, 8, dtype=torch.long)
    c[:, 5:, :] = 1
    c[0, 1:4, 1:4] = 2
    c[1, 1:4, 3:6] = 2
    return c


def _run(backbone, feats, coarse, **changes):
    cfg = SegmentConfig.tiny()
    return modulate(backbone, feats, coarse, cfg.replace(upsample=cfg.upsample.replace(**changes)))


def _spy_batches(monkeypatch, module, name: str, fail_above: int | None = None) -> list[int]:
    """Record the batch (first dim) of every call of ``module.name``; raise an OOM above
    ``fail_above`` samples."""
    sizes: list[int] = []
    original = getattr(module, name)

    def spy(backbone, z, *args, **kwargs):
        if fail_above is not None and z.shape[0] > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        sizes.append(z.shape[0])
        return original(backbone, z, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return sizes


def test_auto_batches_follow_the_budget_and_keep_labels(tiny, feats, monkeypatch):
    tiny.footprints.clear()
    one = _run(tiny, feats, _coarse(), modulation_batch=1, decode_batch=1)
    whole = _run(tiny, feats, _coarse(), modulation_batch=0, decode_batch=0)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1)  # room for one unit only
    sizes = _spy_batches(monkeypatch, sd_mod, "unet_eps")
    small = _run(tiny, feats, _coarse())
    assert set(sizes) == {2}  # one (class, frame) pair: its +1 and -1 triples
    calls_of_one_pair = len(sizes)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10**12)
    sizes.clear()
    large = _run(tiny, feats, _coarse())
    # the footprint is known now: every pair in one call per step
    assert len(set(sizes)) == 1 and sizes[0] > 2
    assert len(sizes) * sizes[0] == 2 * calls_of_one_pair
    assert {key[0] for key in tiny.footprints} == {"modulation", "decode"}
    for other in (small, large, whole):
        assert torch.equal(other.labels, one.labels)
        torch.testing.assert_close(other.diff, one.diff, rtol=1e-4, atol=1e-4)


def test_injected_oom_halves_the_modulation_batch_with_equal_labels(
    tiny, feats, monkeypatch, caplog
):
    base = _run(tiny, feats, _coarse(), modulation_batch=0)
    sizes = _spy_batches(monkeypatch, sd_mod, "unet_eps", fail_above=2)
    with caplog.at_level(logging.WARNING, logger="zsvss_nb.backbones.memory"):
        halved = _run(tiny, feats, _coarse(), modulation_batch=0)
    assert sizes and max(sizes) == 2
    assert len([r for r in caplog.records if "retrying" in r.message]) == 1
    assert torch.equal(halved.labels, base.labels)
    torch.testing.assert_close(halved.diff, base.diff, rtol=1e-4, atol=1e-4)


SYNC_METHODS = ("cpu", "item", "tolist", "nonzero", "__bool__", "__float__", "__int__")


def _count_syncs_in(monkeypatch, module, loop: str) -> dict[str, int]:
    """Count host reads (Tensor.cpu, .item, ...) made while ``module.loop`` runs."""
    counts = dict.fromkeys(SYNC_METHODS, 0)
    active = [False]
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if active[0]:
                counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    inner = getattr(module, loop)

    def loop_spy(*args, **kwargs):
        active[0] = True
        try:
            return inner(*args, **kwargs)
        finally:
            active[0] = False

    monkeypatch.setattr(module, loop, loop_spy)
    return counts


def test_sd_step_loop_reads_nothing_back_to_the_host(tiny, feats, monkeypatch):
    counts = _count_syncs_in(monkeypatch, sd_mod, "denoise_steps")
    setup = _count_syncs_in(monkeypatch, sd_mod, "_chunk_inputs")  # the counter works:
    calls = _spy_batches(monkeypatch, sd_mod, "unet_eps")
    _run(tiny, feats, _coarse(), modulation_batch=4)
    assert calls  # the loop ran, with the shared-probability and prefix-replay paths
    assert counts == dict.fromkeys(SYNC_METHODS, 0)
    assert setup["tolist"] > 0  # the per-call set-up groups the frames on the host


SVD_CFG = SegmentConfig.paper_svd().replace(k=3, window=B)


@pytest.fixture(scope="module")
def svd_feats(tiny_svd):
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8)
    return extract(tiny_svd, frames, SVD_CFG)


def test_svd_auto_plan_matches_its_fixed_plan_and_its_step_loop_does_not_sync(
    tiny_svd, svd_feats, monkeypatch
):
    # one video per UNet call and one frame per decode, fixed and planned (a budget of 1 byte)
    fixed = modulate(
        tiny_svd, svd_feats, _coarse(), SVD_CFG.replace(modulation_batch=B, decode_batch=1)
    )
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1)
    counts = _count_syncs_in(monkeypatch, svd_mod, "denoise_steps")
    auto = modulate(tiny_svd, svd_feats, _coarse(), SVD_CFG)
    assert counts == dict.fromkeys(SYNC_METHODS, 0)
    assert torch.equal(auto.labels, fixed.labels) and torch.equal(auto.diff, fixed.diff)
