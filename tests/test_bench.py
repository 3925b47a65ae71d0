"""The benchmark (zsvss bench) and the stage-3 speed options it measures, on the tiny model.

The smoke test runs both modes end to end through the CLI functions; no timing is asserted.
The option tests compare each fast path against the plain path it replaces on a shared
feature pass with planted coarse maps.
"""

import argparse
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsvss_nb.backbones.precision import native_bf16
from zsvss_nb.backbones.sd.modulation import needed_pairs, pair_boxes, plan_triples
from zsvss_nb.backbones.sd.passes import prefix_modules
from zsvss_nb.config import SegmentConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.features import extract
from zsvss_nb.run import bench
from zsvss_nb.upsample import modulate

B, S = 3, 128


@pytest.fixture(scope="module")
def feats(tiny):
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8)
    return extract(tiny, frames, SegmentConfig.tiny())


def _coarse() -> torch.Tensor:
    c = torch.zeros(B, 8, 8, dtype=torch.long)
    c[:, 5:, :] = 1  # a band in every frame
    c[0, 1:4, 1:4] = 2  # a blob in frames 0 and 1 only
    c[1, 1:4, 3:6] = 2
    return c


def _run(tiny, feats, **changes):
    cfg = SegmentConfig.tiny()
    return modulate(tiny, feats, _coarse(), cfg.replace(upsample=cfg.upsample.replace(**changes)))


# -- workload ------------------------------------------------------------------------------
def test_synthetic_workload_plants_classes_that_come_and_go():
    work = bench.synthetic_video(frames=14, size=256, classes=4, seed=3)
    assert work.frames.shape == (14, 3, 256, 256) and work.frames.dtype == torch.uint8
    assert work.labels.shape == (14, 256, 256)
    assert set(work.labels[0].unique().tolist()) == {0, 1, 2, 3}  # all visible in frame 1
    for c in (2, 3):  # every blob leaves the frame within the window
        present = (work.labels == c).flatten(1).any(1)
        assert bool(present[0]) and not bool(present.all())
    assert 0.5 < work.pair_occupancy(16) < 1.0
    # the band is the green striped region at the bottom
    band = work.labels[0] == 1
    rgb = work.frames[0].float()
    assert float(rgb[1][band].mean()) > float(rgb[0][band].mean()) + 40
    again = bench.synthetic_video(frames=14, size=256, classes=4, seed=3)
    assert torch.equal(again.frames, work.frames)
    other = bench.synthetic_video(frames=14, size=256, classes=4, seed=4)
    assert not torch.equal(other.frames, work.frames)
    with pytest.raises(ConfigError):
        bench.synthetic_video(classes=1)


# -- smoke test of the whole benchmark -------------------------------------------------------
def test_tiny_benchmark_both_modes_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        [
            "--model",
            "tiny",
            "--size",
            "128",
            "--frames",
            "5",
            "--compare-reference",
            "--modes",
            "reference-fp32",
            "--json",
            str(out),
        ]
    )
    assert bench.run_from_args(args) == 0
    table = capsys.readouterr().out
    assert "| per frame | reference | default |" in table and "speedup vs reference" in table
    result = json.loads(out.read_text())
    for key in (
        "model",
        "mode",
        "seconds_per_frame",
        "stages",
        "unet_evals_per_frame",
        "vae_decodes_per_frame",
        "peak_rss_gb",
        "disk_bytes_written",
        "speedup_vs_reference",
        "label_agreement",
        "machine",
        "command",
        "runs",
    ):
        assert key in result, key
    assert result["model"] == "tiny" and result["mode"] == "default"
    assert set(result["runs"]) == {"reference", "default", "reference-fp32"}
    mach = result["machine"]  # the machine's CPU, its bf16 flags and the thread policy
    assert {"cpu_model", "isa", "omp_wait_policy"} <= set(mach)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert all((f in mach["isa"]) == (f in flags) for f in ("avx512_bf16", "amx_bf16"))
    assert f"ISA {mach['isa']}" in table and mach["cpu_model"] in table
    assert {k for k, _ in bench.STAGES} <= set(result["stages"])
    assert isinstance(result["label_agreement"], float)
    assert 0.0 <= result["label_agreement"] <= 1.0
    # the reference runs the reference code's UNet precision on this device, the tiny
    # preset fp32; at the same precision the default is the reference reorganised: same labels
    want = bench.reference_precision("cpu")
    assert result["runs"]["reference"]["precision"] == want
    assert result["runs"]["reference-fp32"]["dtypes"] == "float32/float32"
    assert result["label_agreement_vs_reference_fp32"] >= 0.999
    if want == "fp32":
        assert result["label_agreement"] >= 0.999
    ref = result["runs"]["reference-fp32"]
    # reference: 3 + 3 * 2 * K UNet evals (x2 CFG) and 1 + 2K decodes per frame, K = 3
    assert ref["unet_evals_per_frame"] == pytest.approx(2 * 3 * (1 + 2 * 3))
    assert ref["vae_decodes_per_frame"] == pytest.approx(1 + 2 * 3)
    assert result["vae_decodes_per_frame"] < ref["vae_decodes_per_frame"]
    assert result["unet_evals_per_frame"] <= ref["unet_evals_per_frame"]
    assert result["output_bytes"] > 0 and result["peak_rss_gb"] > 0
    # nothing but the outputs is written (the mp4 muxer patches its 4-byte mdat size in place),
    # and the output lock's record: {"pid": ..., "host": ..., "started": ...}, deleted at the end
    lock_record = 80 + len(socket.gethostname())
    for run in result["runs"].values():
        assert run["extra_disk_bytes"] is None or run["extra_disk_bytes"] <= 16 + lock_record


def test_bf16_modes_are_skipped_without_native_bf16(tiny, monkeypatch):
    monkeypatch.setattr(bench, "native_bf16", lambda device: False)
    kwargs = dict(model="tiny", size=64, frames=2, backbone=tiny, overlay=False)
    result = bench.run_benchmark(modes=("default", "bf16-decode", "fast"), **kwargs)
    assert list(result["runs"]) == ["default"] and result["modes"] == ["default"]
    assert set(result["skipped_modes"]) == {"bf16-decode", "fast"}
    assert "skipped mode bf16-decode: no native bf16" in bench.format_table(result)
    with pytest.raises(ConfigError, match="every benchmark mode was skipped"):
        bench.run_benchmark(modes=("bf16-unet",), **kwargs)
    forced = bench.run_benchmark(modes=("bf16-decode",), allow_emulated_bf16=True, **kwargs)
    assert list(forced["runs"]) == ["bf16-decode"] and not forced["skipped_modes"]


def test_native_bf16_on_cpu_matches_the_cpu_flags():
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text()
    if "flags" not in flags:
        pytest.skip("no /proc/cpuinfo flags here")
    native = any(f in flags.split() for f in ("avx512_bf16", "amx_tile"))
    assert native_bf16("cpu") is native


def test_unknown_mode_is_rejected():
    with pytest.raises(ConfigError, match="not known"):
        bench.run_benchmark(model="tiny", modes=("warp-speed",))


# -- stage-3 speed options ------------------------------------------------------------------
def test_prefix_modules_cover_the_unet_before_the_modulated_layer(tiny):
    names = list(prefix_modules(tiny.unet, 7, "attn2"))
    assert names == [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "down_blocks.3",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2.resnets.0",
        "up_blocks.2.attentions.0",
        "up_blocks.2.resnets.1",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn1",
    ]
    assert list(prefix_modules(tiny.unet, 9, "attn1"))[-1] == "up_blocks.3.resnets.0"


def test_prefix_replay_matches_recomputation_and_skips_the_prefix(tiny, feats):
    assert feats.prefix_key == (22, 7, "attn2") and "down_blocks.0" in feats.prefix
    calls = []
    handle = tiny.unet.down_blocks[0].resnets[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = _run(tiny, feats, modulation_batch=0)
        n_shared = len(calls)
        calls.clear()
        full = _run(tiny, feats, share_prefix=False, modulation_batch=0)
        n_full = len(calls)
    finally:
        handle.remove()
    assert (n_shared, n_full) == (2, 3)  # one batched call per step; step 22 replayed
    assert torch.equal(shared.labels, full.labels)
    assert torch.equal(shared.raw_labels, full.raw_labels)
    assert torch.allclose(shared.diff, full.diff, atol=1e-4, rtol=0)
    assert shared.unet_evals == full.unet_evals
    # the forward shadows are removed afterwards
    assert "forward" not in tiny.unet.down_blocks[0].__dict__


def test_decode_and_modulation_batches_do_not_change_results(tiny, feats):
    base = _run(tiny, feats)
    small = _run(tiny, feats, decode_batch=1, modulation_batch=2)
    whole = _run(tiny, feats, decode_batch=0)
    for other in (small, whole):
        assert torch.equal(other.labels, base.labels)
        assert torch.allclose(other.diff, base.diff, atol=1e-4, rtol=0)
        assert other.vae_decodes == base.vae_decodes


def test_modulation_without_cfg_halves_the_unet_work(tiny, feats):
    base = _run(tiny, feats)
    cond = _run(tiny, feats, modulation_cfg=False)
    assert cond.unet_evals * 2 == base.unet_evals
    assert cond.labels.shape == base.labels.shape
    assert set(cond.labels.unique().tolist()) <= {0, 1, 2}
    assert not torch.allclose(cond.diff, base.diff, atol=1e-3)  # a different computation


def test_bf16_options_run_and_stay_close(tiny, feats):
    base = _run(tiny, feats)
    for changes in ({"unet_autocast": "bfloat16"}, {"decode_dtype": "bfloat16"}):
        low = _run(tiny, feats, **changes)
        assert low.diff.dtype == torch.float32
        agreement = float((low.labels == base.labels).float().mean())
        assert agreement > 0.9, changes


class _CountingUNet(torch.nn.Module):
    """Stands in for torch.compile's wrapper: calls the UNet it wraps and counts the calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_torch_compile_option_runs_the_compiled_unet_built_once(tiny, feats, monkeypatch):
    built = []

    def fake_compile(module, **kwargs):
        built.append((module, kwargs))
        return _CountingUNet(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    calls = []
    handle = tiny.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        base = _run(tiny, feats)
        plain_calls = len(calls)
        first = _run(tiny, feats, torch_compile=True)
        second = _run(tiny, feats, torch_compile=True)
        wrapper = tiny.compiled_unet
    finally:
        handle.remove()
        tiny.compiled_unet = None
    assert len(built) == 1 and built[0][0] is tiny.unet and built[0][1] == {"dynamic": True}
    # every modulation UNet call of both runs went through the compiled module
    assert plain_calls > 0 and wrapper.calls == 2 * plain_calls == len(calls) - plain_calls
    for res in (first, second):
        assert torch.equal(res.labels, base.labels)
        assert res.unet_evals == base.unet_evals


def _needed_loop(masks: torch.Tensor):
    K, Bn, h, w = masks.shape
    cand = torch.zeros_like(masks)
    for k in range(K):
        for f in range(Bn):
            for y in range(h):
                for x in range(w):
                    cand[k, f, y, x] = masks[
                        k, f, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2
                    ].any()
    needed = torch.zeros(K, Bn, dtype=torch.bool)
    for k in range(K):
        for f in range(Bn):
            for y in range(h):
                for x in range(w):
                    if cand[k, f, y, x] and int(cand[:, f, y, x].sum()) >= 2:
                        needed[k, f] = True
    return needed, cand


def test_neighbourhood_pairs_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 2, 2), generator=g).repeat_interleave(3, 1)
    labels = labels.repeat_interleave(3, 2)  # 6x6 maps made of 3x3 patches
    labels[3] = 1  # a frame with one class only: nothing to modulate
    masks = labels[None] == torch.arange(3).view(-1, 1, 1, 1)
    needed, cand = needed_pairs(masks, True)
    want_needed, want_cand = _needed_loop(masks)
    assert torch.equal(cand, want_cand)
    assert torch.equal(needed.flatten(2).any(-1), want_needed)
    assert not bool(needed[:, 3].any())
    same, none = needed_pairs(masks, False)
    assert none is None and torch.equal(same, masks)


def test_neighbourhood_classes_restrict_labels_to_neighbours(tiny, feats):
    res = _run(tiny, feats, neighbourhood_classes=True)
    base = _run(tiny, feats)
    # frame 2 has only the background/band boundary: the blob class can never win there
    assert not bool((res.labels[2] == 2).any())
    # far from any boundary the label is the coarse one
    coarse_px = F.interpolate(_coarse()[:, None].float(), size=(S, S), mode="nearest")[:, 0]
    assert torch.equal(res.labels[:, :32, 112:], coarse_px.long()[:, :32, 112:])
    assert res.unet_evals <= base.unet_evals


def test_cache_omits_what_precedes_the_modulated_layer_at_t_star(tiny, feats):
    step = 22
    for block in (3, 4, 5, 6):
        for layer, kind in (("attn1", "q"), ("attn1", "k"), ("attn2", "q")):
            assert (step, block, layer, kind) not in feats.cache
            assert (step + 1, block, layer, kind) in feats.cache
    # block 7's projections precede its modulated cross-attention output too
    assert (step, 7, "attn1", "q") not in feats.cache
    assert (step, 7, "attn2", "q") not in feats.cache
    assert (step, 8, "attn1", "q") in feats.cache and (step + 1, 7, "attn2", "q") in feats.cache
    full = extract(tiny, feats.images, SegmentConfig.tiny().replace(share_prefix=False))
    assert full.prefix_key is None and not full.prefix
    assert set(full.cache) > set(feats.cache)
    # the reference execution on the pruned cache equals it on the full cache
    cfg = SegmentConfig.tiny().replace(execution="reference")
    a = modulate(tiny, feats, _coarse(), cfg)
    b = modulate(tiny, full, _coarse(), cfg)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.diff, b.diff, atol=1e-4, rtol=0)
    # modulating earlier than the features were prepared for needs the pruned entries
    with pytest.raises(ConfigError, match="extract again"):
        modulate(tiny, feats, _coarse(), SegmentConfig.tiny().replace(modulated_blocks=(5,)))


def test_attention_reuse_matches_the_plain_modulated_passes(tiny, feats):
    calls = []
    handle = (
        tiny.unet.up_blocks[3]
        .attentions[0]
        .transformer_blocks[0]
        .attn1.to_q.register_forward_hook(lambda *_: calls.append(1))
    )
    try:
        shared = _run(tiny, feats)
        n_shared = len(calls)
        plain = _run(tiny, feats, reuse_attention=False)
        n_plain = len(calls) - n_shared
    finally:
        handle.remove()
    assert n_shared == 0 and n_plain > 0  # injected q is never recomputed with reuse
    assert torch.equal(shared.labels, plain.labels)
    assert torch.allclose(shared.diff, plain.diff, atol=1e-4, rtol=0)
    assert shared.unet_evals == plain.unet_evals


def _boxes_loop(masks, pairs, margin, hl, wl):
    out = []
    h, w = masks.shape[-2:]
    for k, _s, f in pairs.tolist():
        ys, xs = torch.nonzero(masks[k, f] > 0, as_tuple=True)
        y0, y1 = int(ys.min()) * hl // h - margin, (int(ys.max()) + 1) * hl // h + margin
        x0, x1 = int(xs.min()) * wl // w - margin, (int(xs.max()) + 1) * wl // w + margin
        out.append([max(0, y0), min(hl, y1), max(0, x0), min(wl, x1)])
    return torch.tensor(out)


def test_pair_boxes_match_a_loop_reference():
    masks = F.one_hot(_coarse(), 3).permute(3, 0, 1, 2).float()  # [K, B, 8, 8]
    pairs = plan_triples(masks > 0, True)[0::2]
    for margin in (0, 1, 3, 20):
        got = pair_boxes(masks, pairs, margin, (16, 16))
        assert torch.equal(got, _boxes_loop(masks, pairs, margin, 16, 16)), margin
    assert pair_boxes(masks, pairs, None, (16, 16)) is None


def test_region_decode_crops_each_pair_and_zeroes_outside(tiny, feats, monkeypatch):
    shapes = []
    original = type(tiny).decode

    def spy(self, latents, dtype=torch.float32, **kwargs):
        shapes.append(tuple(latents.shape[-2:]))
        return original(self, latents, dtype, **kwargs)

    monkeypatch.setattr(type(tiny), "decode", spy)
    whole = _run(tiny, feats)
    n_whole = len(shapes)
    wide = _run(tiny, feats, decode_margin=16)  # every box is the whole frame
    assert shapes[n_whole:] == shapes[:n_whole]
    assert torch.equal(wide.labels, whole.labels) and torch.equal(wide.diff, whole.diff)
    shapes.clear()
    crop = _run(tiny, feats, decode_margin=1)
    masks = F.one_hot(_coarse(), 3).permute(3, 0, 1, 2).float()
    pairs = plan_triples(masks > 0, True)[0::2]
    boxes = pair_boxes(masks, pairs, 1, (S // 8, S // 8))
    assert sorted(shapes) == sorted(
        (int(b[1] - b[0]), int(b[3] - b[2])) for b in boxes
    )  # one decode call of (+, -) per pair, on its box
    blob = 2  # the blob's box in frame 0 covers grid cells 1-3: latent 2-8, +-1 cell
    inside = torch.zeros(S, S, dtype=torch.bool)
    inside[8:72, 8:72] = True
    assert torch.count_nonzero(crop.diff[blob, 0][~inside]) == 0
    assert torch.count_nonzero(crop.diff[blob, 0][inside]) > 0
    assert crop.labels.shape == whole.labels.shape


def test_load_option_reports_the_loaded_over_idle_ratio(tiny):
    result = bench.run_benchmark(
        model="tiny", size=64, frames=2, backbone=tiny, overlay=False, load=1
    )
    load = result["load"]
    assert load["busy_processes"] == 1 and load["loaded_over_idle"] > 0
    assert load["label_agreement_with_idle"] == 1.0  # the busy processes change no result
    assert "with 1 busy processes beside it" in bench.format_table(result)
    assert (
        bench.run_benchmark(model="tiny", size=64, frames=2, backbone=tiny, overlay=False)["load"]
        is None
    )
    with pytest.raises(ConfigError, match="busy processes"):
        bench.run_benchmark(model="tiny", size=64, frames=2, backbone=tiny, load=-1)
