"""SegmentConfig.precision: the whole UNet (feature pass and modulated passes) computes in it, the
VAE decode in its own dtype, "auto" follows the device, and old manifests load as fp32."""

import pytest
import torch

from zsvss_nb.backbones import precision as prec
from zsvss_nb.config import SegmentConfig
from zsvss_nb.errors import ConfigError
from zsvss_nb.features import extract
from zsvss_nb.run.bench import MODES, _mode_config, reference_precision
from zsvss_nb.run.cli import build_parser
from zsvss_nb.run.commands import build_config
from zsvss_nb.upsample import modulate


def _dtypes(module: torch.nn.Module, seen: list, stage: list):
    return module.register_forward_hook(lambda _m, _i, out: seen.append((stage[0], out.dtype)))


def _run_recording(backbone, cfg, frames, coarse):
    """(stage, output dtype) of the UNet's last 1x1 projection and the VAE decoder's conv_out."""
    seen, stage = [], ["features"]
    attn = backbone.unet.up_blocks[3].attentions[0]
    handles = [
        _dtypes(attn.proj_out, seen, stage),
        _dtypes(backbone.vae.decoder.conv_out, seen, stage),
    ]
    try:
        feats = extract(backbone, frames, cfg)
        stage[0] = "modulation"
        modulate(backbone, feats, coarse, cfg)
    finally:
        for h in handles:
            h.remove()
    return seen


def _frames(n: int, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sd_precision_covers_feature_and_modulated_passes_not_the_decode(tiny, precision):
    cfg = SegmentConfig.tiny().replace(precision=precision)
    coarse = torch.zeros(2, 4, 4, dtype=torch.long)
    coarse[:, 2:] = 1
    seen = _run_recording(tiny, cfg, _frames(2, 64), coarse)
    want = prec.PRECISION_DTYPES[precision]
    assert seen  # the hooks fired
    feature_unet = {d for s, d in seen if s == "features"}
    assert feature_unet == {want}  # the encoder has no decoder conv_out: UNet only
    mod = {d for s, d in seen if s == "modulation"}
    assert want in mod and torch.float32 in mod  # modulated UNet in `precision`, decode fp32
    # the decode dtype is its own field
    low = _run_recording(tiny, cfg.replace(decode_dtype="bfloat16"), _frames(2, 64), coarse)
    assert {d for s, d in low if s == "modulation"} == {want, torch.bfloat16}


def test_svd_precision_covers_its_unet(tiny_svd):
    cfg = SegmentConfig.paper_svd().replace(max_side=64, k=2, window=2, precision="bf16")
    seen = []
    h = tiny_svd.unet.conv_out.register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
    try:
        feats = extract(tiny_svd, _frames(2, 64), cfg)
        modulate(tiny_svd, feats, torch.zeros(2, 4, 4, dtype=torch.long), cfg.replace(lam=1.0))
    finally:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}


def test_unet_autocast_still_overrides_only_the_modulated_passes(tiny):
    cfg = SegmentConfig.tiny().replace(unet_autocast="bfloat16")
    assert prec.modulation_dtype(cfg, "cpu") == torch.bfloat16
    assert prec.unet_dtype(cfg.precision, "cpu") == torch.float32
    ref = cfg.replace(execution="reference", decode_dtype="bfloat16")
    assert prec.modulation_dtype(ref, "cpu") == torch.float32  # the reference ignores it
    assert prec.decode_dtype(ref) == torch.float32


def test_auto_follows_the_device(monkeypatch):
    assert prec.unet_dtype("fp16", "cpu") == torch.float16
    monkeypatch.setattr(prec, "native_bf16", lambda device: True)
    # pinned decision (issue 18): until bf16's label agreement is measured on sd21-base-random,
    # "auto" keeps a CPU with native bf16 in fp32; AUTO_CPU_BF16 is the one switch
    assert prec.AUTO_CPU_BF16 is False
    assert prec.unet_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(prec, "AUTO_CPU_BF16", True)
    assert prec.unet_dtype("auto", "cpu") == torch.bfloat16
    assert prec.unet_dtype("auto", "cuda") == torch.float16  # the paper's autocast
    assert prec.unet_dtype("auto", "mps") == torch.float32
    monkeypatch.setattr(prec, "native_bf16", lambda device: False)
    assert prec.unet_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        SegmentConfig().replace(precision="int8")


def test_reference_mode_runs_the_reference_codes_precision(monkeypatch):
    import zsvss_nb.run.bench as bench

    base = SegmentConfig.paper_sd()
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(bench, "native_bf16", lambda device, n=native: n)
        assert reference_precision("cpu") == want
        assert _mode_config(base, "reference", "cpu").precision == want
    assert reference_precision("cuda") == "fp16"
    ref32 = _mode_config(base, "reference-fp32", "cpu")
    assert (ref32.precision, ref32.upsample.execution) == ("fp32", "reference")
    assert {"reference", "reference-fp32", "fp32", "bf16-unet", "bf16-decode"} <= set(MODES)


def test_precision_on_the_cli_and_in_old_manifests():
    parse = build_parser().parse_args
    args = parse(["segment", "v.mp4", "--out", "o", "--model", "tiny", "--precision", "bf16"])
    assert build_config(args).precision == "bf16"
    args = parse(["segment", "v.mp4", "--out", "o", "--preset", "paper-sd"])
    assert build_config(args).precision == "auto"
    new = SegmentConfig.paper_sd().to_dict()
    assert SegmentConfig.from_dict(new) == SegmentConfig.paper_sd()
    old = {k: v for k, v in new.items() if k != "precision"}  # written before the field
    old["upsample"] = {
        k: v for k, v in new["upsample"].items() if k not in ("reuse_attention", "decode_margin")
    }
    loaded = SegmentConfig.from_dict(old)
    assert loaded.precision == "fp32"  # what those runs computed in
    assert loaded.upsample.unet_autocast == "none"


def test_half_precisions_the_cpu_would_emulate_warn(monkeypatch, caplog):
    cfg = SegmentConfig.tiny()
    with caplog.at_level("WARNING", logger=prec.log.name):
        prec.warn_if_emulated_bf16(cfg, "cpu")
        assert not caplog.records  # fp32 is silent
        prec.warn_if_emulated_bf16(cfg.replace(precision="fp16"), "cpu")
        assert "float16 requested (precision=fp16" in caplog.text
        caplog.clear()
        prec.warn_if_emulated_bf16(cfg.replace(decode_dtype="float16"), "cuda")
        assert not caplog.records  # fp16 is CUDA's precision
        monkeypatch.setattr(prec, "native_bf16", lambda device: False)
        prec.warn_if_emulated_bf16(cfg.replace(precision="bf16"), "cpu")
        assert "bfloat16 requested (precision=bf16" in caplog.text
        caplog.clear()
        monkeypatch.setattr(prec, "native_bf16", lambda device: True)
        prec.warn_if_emulated_bf16(cfg.replace(precision="bf16"), "cpu")
        assert not caplog.records


def test_measurement_modes_change_one_thing():
    base = SegmentConfig.paper_sd()
    for mode, field, value in (
        ("bf16-unet", "precision", "bf16"),
        ("fp32", "precision", "fp32"),
        ("no-reuse-attention", "reuse_attention", False),
        ("region-decode", "decode_margin", 8),
    ):
        cfg = _mode_config(base, mode, "cpu")
        got = getattr(cfg, field) if field == "precision" else getattr(cfg.upsample, field)
        assert got == value, mode
    assert _mode_config(base, "bf16-unet", "cpu").upsample.decode_dtype == "float32"
    assert _mode_config(base, "bf16-decode", "cpu").precision == "fp32"
    fast = _mode_config(base, "fast", "cpu")
    assert (fast.precision, fast.upsample.decode_dtype) == ("bf16", "bfloat16")
    assert base.upsample.reuse_attention and base.upsample.decode_margin is None  # defaults
