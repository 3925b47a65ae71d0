"""The command line's configuration: each model's own default settings, and explicit overrides."""

from __future__ import annotations

import json

import pytest

from zsvss_nb.config import SegmentConfig
from zsvss_nb.run.cli import build_parser, main
from zsvss_nb.run.commands import build_config


def parse(*argv: str):
    return build_parser().parse_args(["segment", "clip", "--out", "out", *argv])


@pytest.mark.parametrize(
    "model, preset",
    [("tiny", "paper-sd"), ("tiny-svd", "paper-svd"), ("dinov2-s", "dinov2")],
)
def test_the_model_picks_its_default_config(model, preset):
    cfg = build_config(parse("--model", model))
    assert cfg == SegmentConfig.from_preset(preset)
    if model == "dinov2-s":  # the settings measured best for the ViT (README, DINOv2 section)
        assert cfg.features.max_side == 448 and cfg.features.dinov2_layer == -1
        assert cfg.features.normalisation == "linf" and cfg.upsample.method == "bilinear"


def test_an_explicit_preset_or_override_wins():
    assert build_config(parse("--model", "dinov2-s", "--preset", "paper-sd")).preset == "paper-sd"
    cfg = build_config(parse("--model", "dinov2-s", "--upsample", "bilateral", "--max-side", "224"))
    assert cfg.preset == "dinov2" and cfg.upsample.method == "bilateral"
    assert cfg.features.max_side == 224
    cfg = build_config(parse("--model", "tiny-svd", "--set", "svd.decode_frames=0"))
    assert cfg.preset == "paper-svd" and cfg.svd.decode_frames == 0
    cfg = build_config(parse("--model", "tiny-svd", "--set", "motion_bucket_id=64"))
    assert cfg.svd.motion_bucket_id == 64


def test_segment_with_dinov2_runs_its_defaults(tmp_path):
    from PIL import Image

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 64), (40 * i, 90, 200 - 30 * i)).save(frames / f"{i:05d}.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "-q",
                "segment",
                str(frames),
                "--model",
                "dinov2-s",
                "--k",
                "2",
                "--out",
                str(out),
                "--no-overlay",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["preset"] == "dinov2"
    assert manifest["stats"]["upsampler"] == "bilinear"


def test_segmenter_takes_the_backbones_config(tiny, tiny_svd):
    from zsvss_nb import Segmenter

    assert Segmenter(tiny_svd).cfg == SegmentConfig.paper_svd()
    assert Segmenter(tiny).cfg == SegmentConfig.paper_sd()


def test_comma_separated_options_are_parsed_once_for_every_command() -> None:
    from zsvss_nb.fieldtypes import parse_names

    assert parse_names(" diffseg, ,zsvss,") == ["diffseg", "zsvss"]
    assert parse_names(None) is None and parse_names("") is None
