import pytest
import torch

from zsvss_nb.backbones.schedule import Schedule
from zsvss_nb.backbones.sd.passes import cfg_embeddings
from zsvss_nb.config import SegmentConfig
from zsvss_nb.features import extract
from zsvss_nb.kernels.attention import decoder_attention, features_only_stop
from zsvss_nb.kernels.ops import normalise_tokens


def _frames(n=3, h=128, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("hw", [(128, 128), (128, 192), (200, 130)])
def test_feature_shapes(tiny, hw):
    result = extract(tiny, _frames(2, *hw), keep_cache=False)
    h, w = (hw[0] // 64) * 64 // 16, (hw[1] // 64) * 64 // 16
    assert result.features.shape == (2, h, w, 32)
    assert result.refine_features.shape == (2, h, w, 32)
    assert set(result.block_features) == {6, 7, 8}
    # METHOD 1.3: each token is divided by its max-abs
    assert torch.allclose(result.features.abs().amax(-1), torch.ones(2, h, w))


def test_noise_level_is_scheduler_sigma_at_t_star(tiny):
    cfg = SegmentConfig.paper_sd()
    schedule = Schedule.for_backbone(tiny, 25)
    assert schedule.timesteps[22] == 119
    assert abs(float(schedule.sigmas[22]) - 0.38657) < 1e-4
    result = extract(tiny, _frames(), cfg)
    assert result.sigma_start == pytest.approx(float(schedule.sigmas[22]))
    # z_start = z0 + sigma * eps with the per-window generator (METHOD 1.2)
    gen = torch.Generator().manual_seed(cfg.features.seed)
    z0 = tiny.encode(result.images, gen)
    eps = torch.randn(z0.shape, generator=gen)
    assert torch.allclose(result.z_start, z0 + result.sigma_start * eps, atol=1e-5)


def test_cond_uncond_order_and_cond_half_is_captured(tiny):
    emb = cfg_embeddings(tiny, "", 5.0)
    assert torch.count_nonzero(emb[0]) == 0 and torch.count_nonzero(emb[1]) > 0
    cfg = SegmentConfig.paper_sd()
    result = extract(tiny, _frames(2), cfg)
    # replay the feature step with the cond embedding alone and a plain hook on block 7's to_q
    z = result.latents[cfg.features.feature_step - 1]
    sched = result.schedule
    step = cfg.features.feature_step
    x = z / (float(sched.sigmas[step]) ** 2 + 1) ** 0.5
    seen = {}
    hook = decoder_attention(tiny.unet, 7).to_q.register_forward_hook(
        lambda m, i, o: seen.setdefault("q", o.detach())
    )
    with torch.inference_mode():
        tiny.unet(
            x,
            torch.full((2,), float(sched.timesteps[step])),
            encoder_hidden_states=emb[1:].repeat(2, 1, 1),
        )
    hook.remove()
    assert torch.allclose(seen["q"].unflatten(1, (8, 8)), result.block_features[7], atol=1e-5)


def test_same_seed_same_features_other_seed_differs(tiny):
    cfg = SegmentConfig.paper_sd()
    a = extract(tiny, _frames(), cfg)
    b = extract(tiny, _frames(), cfg)
    c = extract(tiny, _frames(), cfg.replace(features=cfg.features.replace(seed=2)))
    assert torch.equal(a.features, b.features)
    assert not torch.equal(a.features, c.features)


def test_caches_cover_injection_steps_and_blocks(tiny):
    cfg = SegmentConfig.paper_sd()
    result = extract(tiny, _frames(2), cfg)
    steps = {k[0] for k in result.cache}
    assert steps == {22, 23, 24}
    assert {k[1] for k in result.cache} == set(cfg.upsample.injected_blocks)
    assert (22, 7, "attn2", "k") not in result.cache  # identical in every pass: not stored
    assert result.cache[(22, 9, "attn1", "q")].shape == (2, 2, 16 * 16, 16)
    assert set(result.latents) == {22, 23, 24}
    assert result.unet_evals == 3 * 2 * 2


def test_a_features_only_pass_stops_after_its_deepest_query(tiny):
    """Without modulation nothing after the deepest feature block's q at the feature step is
    used, so the pass stops there: steps 22 and 23 run whole, step 24 ends inside output block 8
    (block 11 with probing), and every feature is bit-identical to the whole pass's."""
    cfg = SegmentConfig.paper_sd()
    frames = _frames(2)
    ends: list[int] = []  # one entry per UNet call that reached the output convolution
    hook = tiny.unet.conv_out.register_forward_hook(lambda *_: ends.append(1))
    try:
        for extra in ((), tuple(range(3, 12))):
            ends.clear()
            whole = extract(tiny, frames, cfg, extra_blocks=extra, keep_cache=True)
            assert len(ends) == 3
            ends.clear()
            short = extract(tiny, frames, cfg, extra_blocks=extra, keep_cache=False)
            assert len(ends) == 2
            assert torch.equal(short.features, whole.features)
            assert torch.equal(short.refine_features, whole.refine_features)
            assert short.block_features.keys() == whole.block_features.keys()
            for block, q in whole.block_features.items():
                assert torch.equal(short.block_features[block], q), block
            assert short.unet_evals == whole.unet_evals == 3 * 2 * 2 and not short.latents
        again = extract(tiny, frames, cfg, keep_cache=True)  # a stopped call leaves no trace
        assert torch.equal(again.features, whole.features) and len(again.latents) == 3
    finally:
        hook.remove()


def test_features_only_stop_is_the_last_query_in_forward_order() -> None:
    assert features_only_stop({(6, "attn1", "q"): {24}, (8, "attn1", "q"): {24}}) == (
        24,
        8,
        "attn1",
        "q",
    )
    assert features_only_stop({(8, "attn1", "q"): {22}, (6, "attn1", "q"): {23}}) == (
        23,
        6,
        "attn1",
        "q",
    )
    assert features_only_stop({(8, "attn1", "q"): {24}, (9, "attn1", "k"): {24}}) is None
    assert features_only_stop({}) is None


def test_aggregation_and_normalisation_options(tiny):
    cfg = SegmentConfig.paper_sd()
    concat = extract(tiny, _frames(1), cfg.replace(aggregation="concat", normalisation="none"))
    assert concat.features.shape[-1] == 3 * 32
    x = torch.randn(4, 7)
    assert torch.allclose(normalise_tokens(x, "l2").norm(dim=-1), torch.ones(4))
