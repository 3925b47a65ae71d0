import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from zsvss_nb.kernels.attention import AttentionController, SharedProbabilities, decoder_attention


def _inputs(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 4, 16, 16, generator=g)
    return x


def _run(backbone, x):
    emb = backbone.prompt_embedding("")
    ctx = torch.cat([torch.zeros_like(emb), emb]).repeat_interleave(x.shape[0] // 2, 0)
    with torch.inference_mode():
        return backbone.unet(x, torch.full((x.shape[0],), 119.0), encoder_hidden_states=ctx).sample


@pytest.mark.parametrize("processor", [AttnProcessor, AttnProcessor2_0])
def test_capture_leaves_output_unchanged_and_matches_plain_hook(tiny, processor):
    tiny.unet.set_attn_processor(processor())
    x = _inputs(0)
    plain = _run(tiny, x)
    seen = {}
    handle = decoder_attention(tiny.unet, 7, "attn1").to_q.register_forward_hook(
        lambda m, i, o: seen.setdefault("q", o.detach().clone())
    )
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 5
        ctl.plan.capture = {(7, "attn1", "q"): frozenset({5}), (9, "attn2", "k"): frozenset({5})}
        hooked = _run(tiny, x)
        stored = dict(ctl.stored)
    handle.remove()
    assert (hooked - plain).abs().max() <= 1e-6
    q = stored[(5, 7, "attn1", "q")]
    assert q.shape[:2] == (2, 3)  # [CFG half, frame, tokens, channels]
    assert torch.equal(q.flatten(0, 1), seen["q"])
    assert (5, 9, "attn2", "k") in stored
    # after removal the UNet is the plain one again
    assert torch.equal(_run(tiny, x), plain)
    tiny.unet.set_attn_processor(AttnProcessor2_0())


def test_injection_replays_stored_projections(tiny):
    x_a, x_b = _inputs(1), _inputs(2)
    blocks = range(3, 12)
    keys = {
        (b, layer, kind): frozenset({0})
        for b in blocks
        for layer in ("attn1",)
        for kind in ("q", "k")
    }
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.capture = keys
        out_a = _run(tiny, x_a)
        stored = dict(ctl.stored)
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.inject = stored
        ctl.plan.capture = {(7, "attn1", "q"): frozenset({0})}
        out_b_injected = _run(tiny, x_b)
        replayed = ctl.stored[(0, 7, "attn1", "q")]
    assert torch.equal(replayed, stored[(0, 7, "attn1", "q")])
    # injecting a's own projections into a's pass changes nothing
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.inject = stored
        assert torch.allclose(_run(tiny, x_a), out_a, atol=1e-6)
    assert not torch.allclose(out_b_injected, _run(tiny, x_b))


def test_injection_gathers_frames(tiny):
    x = _inputs(3)  # 3 frames
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.capture = {(7, "attn1", "q"): frozenset({0})}
        _run(tiny, x)
        stored = dict(ctl.stored)
    frames = torch.tensor([2, 0, 2, 1])
    x_sub = torch.cat([x[:3][frames], x[3:][frames]])
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.inject = stored
        ctl.plan.inject_frames = frames
        ctl.plan.capture = {(7, "attn1", "q"): frozenset({0})}
        _run(tiny, x_sub)
        seen = ctl.stored[(0, 7, "attn1", "q")]
    assert torch.equal(seen, stored[(0, 7, "attn1", "q")][:, frames])


def test_modulation_adds_mask_to_attention_output(tiny):
    x = _inputs(4)
    n_tokens = 8 * 8
    delta = torch.zeros(3, n_tokens)
    delta[1, :10] = 50.0
    outs = {}
    h = (
        decoder_attention(tiny.unet, 7, "attn2")
        .to_out[0]
        .register_forward_hook(lambda m, i, o: outs.setdefault("plain", o.detach().clone()))
    )
    _run(tiny, x)
    h.remove()
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 22
        ctl.plan.modulation = {7: delta}
        ctl.plan.modulation_steps = frozenset({22})
        h = (
            decoder_attention(tiny.unet, 7, "attn2")
            .to_out[1]
            .register_forward_hook(lambda m, i, o: outs.setdefault("mod", o.detach().clone()))
        )
        _run(tiny, x)
        h.remove()
        ctl.plan.step = 23  # not a modulation step: nothing is added
        assert torch.allclose(_run(tiny, x), _run_plain(tiny, x), atol=1e-6)
    diff = outs["mod"] - outs["plain"]
    expected = torch.cat([delta, delta]).unsqueeze(-1).expand_as(diff)
    assert torch.allclose(diff, expected, atol=1e-4)


def _run_plain(tiny, x):
    return _run(tiny, x)


@pytest.mark.parametrize("processor", [AttnProcessor, AttnProcessor2_0])
def test_shared_probabilities_equal_plain_injection_and_skip_q_k(tiny, processor, monkeypatch):
    """softmax(q k^T) once per (CFG half, frame) gives the injected pass's output, whatever
    processor the layers had, also in small query chunks; to_q/to_k of the shared layers are
    not run; removal restores the layers' processors."""
    tiny.unet.set_attn_processor(processor())
    x = _inputs(5)  # 3 frames, both CFG halves
    keys = {
        (b, layer, kind): frozenset({0})
        for b in range(3, 12)
        for layer, kind in (("attn1", "q"), ("attn1", "k"), ("attn2", "q"))
    }
    with AttentionController(tiny.unet) as ctl:
        ctl.plan.step = 0
        ctl.plan.capture = keys
        _run(tiny, x)
        stored = dict(ctl.stored)
    frames = torch.tensor([2, 0, 2, 1, 2])  # one sample per (class, sign), frames repeat
    x_sub = torch.cat([x[:3][frames], x[3:][frames]]) + 0.3 * _inputs(6, n=5)
    outs, calls = {}, []
    shared = [(b, layer) for b in range(3, 12) for layer in ("attn1", "attn2")]
    for name, share in (("plain", []), ("shared", shared), ("chunked", shared)):
        if name == "chunked":  # 3 query rows per chunk
            monkeypatch.setattr(SharedProbabilities, "max_bytes", 3 * 4 * 8 * 77)
        with AttentionController(tiny.unet, share_probabilities=share) as ctl:
            handle = decoder_attention(tiny.unet, 9, "attn1").to_q.register_forward_hook(
                lambda *_, name=name: calls.append(name)
            )
            ctl.plan.step = 0
            ctl.plan.inject = stored
            ctl.plan.inject_frames = frames
            outs[name] = _run(tiny, x_sub)
            handle.remove()
    assert calls == ["plain"]
    assert (outs["shared"] - outs["plain"]).abs().max() <= 1e-5
    assert (outs["chunked"] - outs["plain"]).abs().max() <= 1e-5
    for b, layer in shared:  # the layers' own processors are back
        assert isinstance(decoder_attention(tiny.unet, b, layer).processor, processor)
    tiny.unet.set_attn_processor(AttnProcessor2_0())
