"""Read and steer the UNet's attention layers: capture q/k, inject stored q/k, modulate outputs.

We hook the attention module's own projections (``to_q``, ``to_k`` and ``to_out[0]``) instead of
replacing its processor, so capture, injection and modulation see exactly the tensors METHOD.md
1.3 and 1.7 name (after ``to_q``/``to_k``, before the head split; after ``to_out``, before the
residual add) whatever attention processor or backend diffusers uses to compute the softmax.

Decoder blocks use the reference code's numbering (``output_blocks`` 3-11, METHOD.md section 7);
"attn1" is spatial self-attention and "attn2" cross-attention. In a spatio-temporal (SVD) UNet,
"tattn1"/"tattn2" name the temporal transformer's self-/cross-attention of the same block, whose
projections are laid out [batch * tokens, frames, C] (the spatial ones [batch * frames, tokens, C]).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

AttnKey = tuple[int, str]  # (reference decoder block 3..11, "attn1" | "attn2" | "tattn1"...)
TEMPORAL_LAYERS = ("tattn1", "tattn2")


class ForwardDone(Exception):
    """Raised by the capture hook once the projection ``AttentionPlan.stop_after`` names is
    stored: the rest of that UNet call produces nothing the pass needs."""


def features_only_stop(
    capture: dict[tuple[int, str, str], set[int] | frozenset[int]],
) -> tuple[int, int, str, str] | None:
    """Where a pass that only reads features may stop: the deepest block's attn1 q at the last
    step any capture needs, as (step, block, "attn1", "q"); None when other projections are
    captured there (their order inside a block is not assumed).

    Decoder blocks run in index order, so once that q is stored the call's remaining blocks
    (SD 2.1: up to output block 11, the full-resolution ones) and the later steps are unused.
    """
    step = max((s for steps in capture.values() for s in steps), default=None)
    if step is None:
        return None
    keys = [k for k, steps in capture.items() if step in steps]
    if any(k[1:] != ("attn1", "q") for k in keys):
        return None
    return (step, max(k[0] for k in keys), "attn1", "q")


def decoder_attention(unet: nn.Module, block: int, layer: str = "attn1") -> nn.Module:
    """The attention module of reference decoder block ``block`` (3-11) in a diffusers UNet.

    ``layer`` "attn1"/"attn2" are the spatial transformer's; "tattn1"/"tattn2" the temporal
    transformer's (``temporal_transformer_blocks[0]``, SVD UNets only).
    """
    up, idx = divmod(block, 3)
    if up == 0 or up >= len(unet.up_blocks) or not hasattr(unet.up_blocks[up], "attentions"):
        raise ValueError(f"decoder block {block} has no attention in this UNet")
    transformer = unet.up_blocks[up].attentions[idx]
    if layer in TEMPORAL_LAYERS:
        if not hasattr(transformer, "temporal_transformer_blocks"):
            raise ValueError(f"decoder block {block} has no temporal attention in this UNet")
        return getattr(transformer.temporal_transformer_blocks[0], layer[1:])
    return getattr(transformer.transformer_blocks[0], layer)


@dataclass
class AttentionPlan:
    """What the controller does at the current step; the denoising loop sets ``step``.

    ``capture``: (block, layer, "q"|"k") -> steps at which the projection is stored.
    ``inject``: (step, block, layer, "q"|"k") -> stored projection [2, F, N, C] (CFG half,
    frame, token, channel); ``inject_frames`` picks, for each sample of one CFG half of the
    current batch, the stored frame it replays.
    ``modulation``: block -> additive mask [n, N] for one CFG half, added (broadcast over
    channels, in both halves) to the chosen attention output at ``modulation_steps``.
    ``modulation_layer`` is one layer name or a tuple of them; a temporal layer receives the
    same [n, N] mask (n = videos * frames) transposed to its [videos * N, frames] layout.
    Temporal layers replay stored [halves, N, F, C] projections once per video of the batch.
    ``stop_after`` (step, block, layer, kind): once stored, the hook raises :class:`ForwardDone`.
    """

    step: int = -1
    capture: dict[tuple[int, str, str], frozenset[int]] = field(default_factory=dict)
    inject: dict[tuple[int, int, str, str], torch.Tensor] = field(default_factory=dict)
    inject_frames: torch.Tensor | None = None
    modulation: dict[int, torch.Tensor] = field(default_factory=dict)
    modulation_layer: str | tuple[str, ...] = "attn2"
    modulation_steps: frozenset[int] = frozenset()
    halves: int = 2  # 2 with classifier-free guidance ([uncond; cond]), 1 without
    frame_groups: list[tuple[int, torch.Tensor]] | None = None  # inject_frames grouped
    # (:func:`frame_groups`), set with them so the hooks never read frames back to the host
    context_per_half: bool = False  # True: the caller gives one context per CFG half
    stop_after: tuple[int, int, str, str] | None = None  # (step, block, layer, kind): ForwardDone


class AttentionController:
    """Owns the hooks on a UNet's decoder attention layers and the tensors they collect.

    Use as a context manager, or call :meth:`remove`. ``stored[(step, block, layer, kind)]``
    holds captured projections as [halves, F, N, C] (uncond half first, as the CFG batch is
    ordered; halves = 1 when guidance is off).
    """

    def __init__(
        self,
        unet: nn.Module,
        blocks: Iterable[int] = range(3, 12),
        layers: Iterable[str] = ("attn1", "attn2"),
        share_probabilities: Iterable[AttnKey] = (),
    ) -> None:
        """``share_probabilities`` names spatial layers whose q and k the plan injects in every
        sample: their softmax(q k^T) is computed once per (CFG half, stored frame) of a call
        (:class:`SharedProbabilities`) instead of once per sample."""
        self.plan = AttentionPlan()
        self.stored: dict[tuple[int, int, str, str], torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._processors: list[tuple[nn.Module, object]] = []
        layers = tuple(layers)
        for block, layer in share_probabilities:
            attn = decoder_attention(unet, block, layer)
            if layer not in TEMPORAL_LAYERS and SharedProbabilities.supports(attn):
                self._processors.append((attn, attn.processor))
                attn.set_processor(SharedProbabilities(self, block, layer, attn.processor))
        for block in blocks:
            for layer in layers:
                attn = decoder_attention(unet, block, layer)
                self._handles.append(
                    attn.to_q.register_forward_hook(self._qk_hook(block, layer, "q"))
                )
                self._handles.append(
                    attn.to_k.register_forward_hook(self._qk_hook(block, layer, "k"))
                )
                self._handles.append(
                    attn.to_out[0].register_forward_hook(self._out_hook(block, layer))
                )

    # -- hooks -----------------------------------------------------------------------------
    def _qk_hook(self, block: int, layer: str, kind: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor):
            plan = self.plan
            key = (plan.step, block, layer, kind)
            injected = plan.inject.get(key)
            if injected is not None:
                if layer in TEMPORAL_LAYERS:
                    output = self._replay_videos(injected, output)
                else:
                    output = self._replay(injected, output)
            steps = plan.capture.get((block, layer, kind))
            if steps is not None and plan.step in steps:
                self.stored[key] = output.detach().unflatten(0, (plan.halves, -1))
                if key == plan.stop_after:
                    raise ForwardDone(key)
            return output

        return hook

    def _replay(self, stored: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        frames = self.plan.inject_frames
        replay = stored if frames is None else stored.index_select(1, frames)
        replay = replay.flatten(0, 1).to(output.dtype)
        if replay.shape != output.shape:
            raise RuntimeError(
                f"injected projection {tuple(replay.shape)} does not match {tuple(output.shape)}"
            )
        return replay

    @staticmethod
    def _replay_videos(stored: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Temporal projections [halves, N, F, C] repeated for every video of the batch."""
        halves, tokens = stored.shape[:2]
        videos = output.shape[0] // max(halves * tokens, 1)
        replay = stored.unsqueeze(1).expand(halves, videos, *stored.shape[1:])
        replay = replay.flatten(0, 2).to(output.dtype)
        if replay.shape != output.shape:
            raise RuntimeError(
                f"injected projection {tuple(replay.shape)} does not match {tuple(output.shape)}"
            )
        return replay

    def _out_hook(self, block: int, layer: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor):
            plan = self.plan
            wanted = plan.modulation_layer
            if isinstance(wanted, str):
                wanted = (wanted,)
            if layer not in wanted or plan.step not in plan.modulation_steps:
                return None
            delta = plan.modulation.get(block)
            if delta is None:
                return None
            if layer in TEMPORAL_LAYERS:  # [videos * F, N] -> [videos * N, F]
                frames = output.shape[1]
                delta = delta.unflatten(0, (-1, frames)).transpose(1, 2).flatten(0, 1)
            delta = delta.repeat(plan.halves, 1).to(output.dtype)  # both CFG halves
            return output + delta.unsqueeze(-1)

        return hook

    # -- lifecycle -------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach every hook; the UNet behaves exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for attn, processor in reversed(self._processors):
            attn.set_processor(processor)
        self._processors.clear()

    def __enter__(self) -> AttentionController:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def frame_groups(frames: torch.Tensor, device: torch.device) -> list[tuple[int, torch.Tensor]]:
    """(frame, rows of ``frames`` [n] that replay it, on ``device``) per distinct frame, in
    ascending frame order: how :class:`SharedProbabilities` shares a frame's probabilities."""
    uniq, inverse = torch.unique(frames.cpu(), return_inverse=True)
    return [
        (int(frame), (inverse == j).nonzero()[:, 0].to(device))
        for j, frame in enumerate(uniq.tolist())
    ]


class SharedProbabilities:
    """Attention processor of a layer whose q and k are injected: P = softmax(q k^T) per
    (CFG half, stored frame), shared by every sample of the call that replays that frame.

    The modulated passes replace q (and, in self-attention, k) of every injected layer with
    the unmodulated pass's, and cross-attention's k comes from the one context of a CFG half,
    so P is the same for all (class, sign) samples of a frame at a step (METHOD 1.7b): only
    v and P @ v are per sample. Skips ``to_q``/``to_k`` there; exact up to float rounding.
    Scores and softmax run in float32, ``max_bytes`` of them at a time (query chunks). Calls
    it cannot serve (no stored q/k at this step, masks, 4-D input) go to the layer's own
    processor, whatever it is.
    """

    max_bytes = 64 * 2**20

    def __init__(self, controller: AttentionController, block: int, layer: str, original):
        self.controller, self.block, self.layer, self.original = controller, block, layer, original

    @staticmethod
    def supports(attn: nn.Module) -> bool:
        """Whether ``attn`` is plain multi-head attention (what :meth:`__call__` computes)."""
        plain = all(
            getattr(attn, name, None) is None
            for name in ("spatial_norm", "group_norm", "norm_q", "norm_k")
        )
        return (
            plain
            and not getattr(attn, "norm_cross", False)
            and not getattr(attn, "residual_connection", False)
            and getattr(attn, "rescale_output_factor", 1.0) == 1.0
            and hasattr(attn, "heads")
            and hasattr(attn, "processor")
        )

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        plan = self.controller.plan
        q = plan.inject.get((plan.step, self.block, self.layer, "q"))
        k = plan.inject.get((plan.step, self.block, self.layer, "k"))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        halves = plan.halves
        usable = (
            q is not None
            and (k is not None or encoder_hidden_states is not None)
            and attention_mask is None
            and temb is None
            and hidden_states.ndim == 3
            and hidden_states.shape[0] % halves == 0
        )
        if usable and k is None and not plan.context_per_half:  # cross-attention: one
            per_half = context.unflatten(0, (halves, -1))  # context per CFG half?
            usable = bool((per_half == per_half[:, :1]).all())
        if not usable:
            if temb is not None:
                kwargs["temb"] = temb
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs
            )
        n, tokens = hidden_states.shape[:2]
        per_half = n // halves
        groups = plan.frame_groups
        if groups is None:
            frames = plan.inject_frames
            if frames is None:
                frames = torch.arange(per_half)
            groups = frame_groups(frames, hidden_states.device)
        value = attn.to_v(context)
        out = value.new_empty(n, tokens, value.shape[-1])
        for h in range(halves):
            keys = k[h] if k is not None else attn.to_k(context[h * per_half][None])
            for frame, where in groups:
                rows = h * per_half + where
                key = keys[frame] if k is not None else keys[0]
                out[rows] = self._attend(attn, q[h, frame], key, value[rows])
        out = attn.to_out[0](out)  # the modulation hook adds its mask here
        return attn.to_out[1](out)

    def _attend(
        self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """softmax(q k^T * scale) @ v for q [N, C], k [M, C] and the samples' v [r, M, C].

        P @ v runs sample by sample, so a sample's result does not depend on which others
        share its UNet call (no batch-dependent rounding)."""
        heads = attn.heads
        (tokens, channels), m = q.shape, k.shape[0]
        d = channels // heads
        qh = q.view(tokens, heads, d).transpose(0, 1)
        kh = k.reshape(m, heads, d).permute(1, 2, 0).float()  # [heads, d, M]
        vh = v.view(v.shape[0], m, heads, d).transpose(1, 2)  # [r, heads, M, d]
        out = vh.new_empty(vh.shape[0], tokens, heads, d)
        step = max(1, self.max_bytes // (4 * heads * m))
        for s in range(0, tokens, step):
            with torch.autocast(q.device.type, enabled=False):
                probs = (torch.matmul(qh[:, s : s + step].float(), kh) * attn.scale).softmax(-1)
            probs = probs.to(vh.dtype)
            for i in range(vh.shape[0]):
                out[i, s : s + step] = torch.matmul(probs, vh[i]).transpose(0, 1)
        return out.flatten(2)


@contextmanager
def controlled(
    unet: nn.Module, blocks: Iterable[int] = range(3, 12)
) -> Iterator[AttentionController]:
    """``with controlled(unet) as ctl:`` hooks installed inside the block, removed after."""
    ctl = AttentionController(unet, blocks)
    try:
        yield ctl
    finally:
        ctl.remove()
