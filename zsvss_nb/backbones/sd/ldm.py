"""Original-layout (LDM / sgm) Stable Diffusion checkpoints, read without any conversion library.

A file such as ``v2-1_512-ema-pruned.safetensors`` holds three models under three prefixes:
``model.diffusion_model.*`` (the UNet, openaimodel names), ``first_stage_model.*`` (the VAE) and
``cond_stage_model.model.*`` (SD 2.x: the OpenCLIP ViT-H text tower) or
``cond_stage_model.transformer.*`` (SD 1.x: OpenAI CLIP-L in transformers' names). This module
reads the architecture off the tensor shapes (:func:`ldm_configs`) and names, for every
parameter of the diffusers UNet and VAE and of the transformers ``CLIPTextModel``, the tensor of
the file that holds it (:func:`convert_ldm`). The mapping is explicit so that it does not depend
on a library release: transformers 5 dropped the ``text_model.`` prefix that diffusers' own
OpenCLIP conversion still emits, which is why that conversion no longer loads SD 2.x files.

Two hyperparameters are not in the weights and follow the SD family: SD 2.x attention uses
64 channels per head (``num_head_channels: 64``) and SD 1.x 8 heads; SD 2.x conditions on the
penultimate OpenCLIP layer (so the last of the file's residual blocks is not used), SD 1.x on
CLIP's last layer. LDM's GroupNorm always has 32 groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import IncompleteModelError
from .model import LATENT_SCALE

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."
LDM_NORM_GROUPS = 32  # ldm.modules.diffusionmodules.util.normalization: GroupNorm32(32, C)
SD2_HEAD_CHANNELS = 64  # SD 2.x configs: num_head_channels 64
SD1_HEADS = 8  # SD 1.x configs: num_heads 8


Tensors = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LdmConfigs:
    """Component configs read off an LDM checkpoint, ready for diffusers/transformers.

    ``text_kind`` is "openclip" (SD 2.x) or "clip" (SD 1.x); ``text_prefix`` is where the text
    encoder's tensors live in the file.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    text_kind: str
    text_prefix: str


def _sub(state: Tensors, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _need(state: Tensors, key: str, where: str, path: str, prefix: str) -> torch.Tensor:
    if key not in state:
        raise IncompleteModelError(f"checkpoint {path}: {where} lacks the tensor {prefix}{key}")
    return state[key]


def _count(keys, pattern: str) -> int:
    """How many distinct integers ``pattern`` (a regex with one group) matches among ``keys``."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


# -- architecture -----------------------------------------------------------------------------
def _text_source(state: Tensors, path: str) -> tuple[str, str]:
    if any(k.startswith(OPENCLIP_PREFIX) for k in state):
        return "openclip", OPENCLIP_PREFIX
    clip = _sub(state, CLIP_PREFIX)
    if clip:
        inner = "text_model." if any(k.startswith("text_model.") for k in clip) else ""
        return "clip", CLIP_PREFIX + inner
    raise IncompleteModelError(
        f"checkpoint {path} has no text encoder (neither {OPENCLIP_PREFIX}* nor {CLIP_PREFIX}*)"
    )


def _unet_config(unet: Tensors, text_kind: str, path: str) -> dict[str, Any]:
    where = "the UNet"
    conv_in = _need(unet, "input_blocks.0.0.weight", where, path, UNET_PREFIX)
    conv_out = _need(unet, "out.2.weight", where, path, UNET_PREFIX)
    levels: list[dict[str, Any]] = [{"channels": [], "attention": False}]
    n_input = _count(unet, r"input_blocks\.(\d+)\.")
    for i in range(1, n_input):
        if f"input_blocks.{i}.0.op.weight" in unet:  # Downsample closes a level
            levels.append({"channels": [], "attention": False})
            continue
        conv = _need(unet, f"input_blocks.{i}.0.in_layers.2.weight", where, path, UNET_PREFIX)
        levels[-1]["channels"].append(int(conv.shape[0]))
        levels[-1]["attention"] |= f"input_blocks.{i}.1.proj_in.weight" in unet
    layers = {len(level["channels"]) for level in levels}
    widths = [set(level["channels"]) for level in levels]
    if len(layers) != 1 or 0 in layers or any(len(w) != 1 for w in widths):
        raise IncompleteModelError(
            f"checkpoint {path}: the UNet's encoder levels are not a plain SD layout"
        )
    per_level = layers.pop()
    channels = [w.pop() for w in widths]
    attn = next((k for k in unet if k.endswith("attn2.to_k.weight")), None)
    if attn is None:
        raise IncompleteModelError(f"checkpoint {path}: the UNet has no cross-attention layers")
    proj_in = next(k for k in unet if k.endswith(".proj_in.weight"))
    first_attention = proj_in[: -len("proj_in.weight")]
    if text_kind == "openclip":
        heads: list[int] | int = [max(1, c // SD2_HEAD_CHANNELS) for c in channels]
    else:
        heads = SD1_HEADS
    up_types = []
    for level in range(len(levels)):  # up block k mirrors encoder level n-1-k
        first = level * (per_level + 1)
        has_attention = f"output_blocks.{first}.1.proj_in.weight" in unet
        up_types.append("CrossAttnUpBlock2D" if has_attention else "UpBlock2D")
    return {
        "sample_size": 64,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(conv_out.shape[0]),
        "down_block_types": [
            "CrossAttnDownBlock2D" if lv["attention"] else "DownBlock2D" for lv in levels
        ],
        "up_block_types": up_types,
        "block_out_channels": channels,
        "layers_per_block": per_level,
        "attention_head_dim": heads,
        "cross_attention_dim": int(unet[attn].shape[1]),
        "use_linear_projection": unet[proj_in].ndim == 2,
        "transformer_layers_per_block": _count(
            unet, re.escape(first_attention) + r"transformer_blocks\.(\d+)\."
        ),
        "norm_num_groups": LDM_NORM_GROUPS,
    }


def _vae_config(vae: Tensors, path: str) -> dict[str, Any]:
    where = "the VAE"
    conv_in = _need(vae, "encoder.conv_in.weight", where, path, VAE_PREFIX)
    n_levels = _count(vae, r"encoder\.down\.(\d+)\.")
    if n_levels == 0:
        raise IncompleteModelError(f"checkpoint {path}: the VAE has no encoder levels")
    channels = [
        int(_need(vae, f"encoder.down.{i}.block.0.conv2.weight", where, path, VAE_PREFIX).shape[0])
        for i in range(n_levels)
    ]
    quant = _need(vae, "quant_conv.weight", where, path, VAE_PREFIX)
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(
            _need(vae, "decoder.conv_out.weight", where, path, VAE_PREFIX).shape[0]
        ),
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "block_out_channels": channels,
        "layers_per_block": _count(vae, r"encoder\.down\.0\.block\.(\d+)\."),
        "latent_channels": int(quant.shape[0]) // 2,
        "norm_num_groups": LDM_NORM_GROUPS,
        "sample_size": 768,
        "scaling_factor": LATENT_SCALE,
    }


def _text_config(text: Tensors, kind: str, prefix: str, path: str) -> dict[str, Any]:
    where = "the text encoder"
    if kind == "openclip":
        token = _need(text, "token_embedding.weight", where, path, prefix)
        width = int(token.shape[1])
        blocks = _count(text, r"transformer\.resblocks\.(\d+)\.")
        fc = _need(text, "transformer.resblocks.0.mlp.c_fc.weight", where, path, prefix)
        proj = text.get("text_projection")
        return {
            "vocab_size": int(token.shape[0]),
            "hidden_size": width,
            "intermediate_size": int(fc.shape[0]),
            # METHOD 1.2 / SD 2.x: FrozenOpenCLIPEmbedder(layer="penultimate")
            "num_hidden_layers": blocks - 1,
            "num_attention_heads": max(1, width // 64),  # OpenCLIP's head width is 64
            "max_position_embeddings": int(
                _need(text, "positional_embedding", where, path, prefix).shape[0]
            ),
            "hidden_act": "gelu",
            "projection_dim": int(proj.shape[1]) if proj is not None else width,
        }
    token = _need(text, "embeddings.token_embedding.weight", where, path, prefix)
    width = int(token.shape[1])
    fc = _need(text, "encoder.layers.0.mlp.fc1.weight", where, path, prefix)
    return {
        "vocab_size": int(token.shape[0]),
        "hidden_size": width,
        "intermediate_size": int(fc.shape[0]),
        "num_hidden_layers": _count(text, r"encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": int(
            _need(text, "embeddings.position_embedding.weight", where, path, prefix).shape[0]
        ),
        "hidden_act": "quick_gelu",  # OpenAI CLIP
        "projection_dim": width,
    }


def ldm_configs(state: Tensors, path: str = "<state dict>") -> LdmConfigs:
    """The UNet, VAE and text-encoder configs of an LDM checkpoint, from its tensor shapes."""
    kind, prefix = _text_source(state, path)
    unet = _sub(state, UNET_PREFIX)
    if not unet:
        raise IncompleteModelError(f"checkpoint {path} holds no UNet ({UNET_PREFIX}*)")
    vae = _sub(state, VAE_PREFIX)
    if not vae:
        raise IncompleteModelError(f"checkpoint {path} holds no VAE ({VAE_PREFIX}*)")
    return LdmConfigs(
        unet=_unet_config(unet, kind, path),
        vae=_vae_config(vae, path),
        text=_text_config(_sub(state, prefix), kind, prefix, path),
        text_kind=kind,
        text_prefix=prefix,
    )


# -- names ------------------------------------------------------------------------------------
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _rename(rest: str, table: Mapping[str, str]) -> str:
    """Replace the leading module path of ``rest`` ("conv1.weight") by its LDM name."""
    for new, old in table.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_ldm_name(key: str, cfg: Mapping[str, Any]) -> str:
    """The openaimodel name (without prefix) of diffusers UNet parameter ``key``."""
    per = int(cfg["layers_per_block"]) + 1  # input/output blocks per level
    parts = key.split(".")
    if parts[0] == "conv_in":
        return "input_blocks.0.0." + ".".join(parts[1:])
    if parts[0] == "time_embedding":
        return {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[parts[1]] + "." + parts[2]
    if parts[0] == "conv_norm_out":
        return "out.0." + parts[1]
    if parts[0] == "conv_out":
        return "out.2." + parts[1]
    if parts[0] == "mid_block":
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[
            (parts[1], parts[2])
        ]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}." + (
            _rename(rest, _RESNET) if parts[1] == "resnets" else rest
        )
    level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * per}.0.op." + rest.removeprefix("conv.")
        block = level * per + j + 1
    else:
        block = level * per + j
        if kind == "upsamplers":
            slot = 2 if cfg["up_block_types"][level].startswith("CrossAttn") else 1
            return f"output_blocks.{level * per + per - 1}.{slot}." + rest
    if kind == "resnets":
        return f"{'input' if parts[0] == 'down_blocks' else 'output'}_blocks.{block}.0." + _rename(
            rest, _RESNET
        )
    return f"{'input' if parts[0] == 'down_blocks' else 'output'}_blocks.{block}.1.{rest}"


def vae_ldm_name(key: str, cfg: Mapping[str, Any]) -> str:
    """The LDM autoencoder name (without prefix) of diffusers AutoencoderKL parameter ``key``."""
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, module = parts[0], parts[1]
    if module in ("conv_in", "conv_out"):
        return key
    if module == "conv_norm_out":
        return f"{side}.norm_out.{parts[2]}"
    if module == "mid_block":
        rest = ".".join(parts[4:])
        if parts[2] == "attentions":
            return f"{side}.mid.attn_1." + _rename(rest, _VAE_ATTENTION)
        return f"{side}.mid.block_{int(parts[3]) + 1}." + _rename(rest, _VAE_RESNET)
    level = int(parts[2])
    if side == "decoder":  # LDM numbers the decoder's levels from the finest
        level = len(cfg["block_out_channels"]) - 1 - level
    group = "down" if side == "encoder" else "up"
    kind, rest = parts[3], ".".join(parts[5:])
    if kind == "resnets":
        return f"{side}.{group}.{level}.block.{parts[4]}." + _rename(rest, _VAE_RESNET)
    sampler = "downsample" if side == "encoder" else "upsample"
    return f"{side}.{group}.{level}.{sampler}.{rest}"


def text_ldm_name(key: str, kind: str) -> tuple[str, int | None]:
    """Where transformers CLIPTextModel parameter ``key`` (no ``text_model.`` prefix) lives.

    Returns (name without prefix, row block): OpenCLIP stores q, k and v as one in_proj
    tensor, so q/k/v are row blocks 0/1/2 of it; None means the whole tensor.
    """
    if kind == "clip":
        return key, None
    if key == "embeddings.token_embedding.weight":
        return "token_embedding.weight", None
    if key == "embeddings.position_embedding.weight":
        return "positional_embedding", None
    if key.startswith("final_layer_norm."):
        return "ln_final." + key.split(".")[-1], None
    match = re.match(r"encoder\.layers\.(\d+)\.(.+)$", key)
    if match is None:
        return key, None
    layer, rest = match.groups()
    base = f"transformer.resblocks.{layer}."
    qkv = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if qkv:
        return base + f"attn.in_proj_{qkv.group(2)}", "qkv".index(qkv.group(1))
    return base + _rename(rest, _CLIP_LAYER), None


# -- loading ----------------------------------------------------------------------------------
def _gather(
    model_keys: Mapping[str, torch.Size],
    state: Tensors,
    name_of: Callable[[str], tuple[str, int | None]],
    prefix: str,
    part: str,
    path: str,
) -> dict[str, torch.Tensor]:
    """Pick, for every model parameter, its tensor of the file; name the file's missing ones."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, shape in model_keys.items():
        name, block = name_of(key)
        tensor = state.get(prefix + name)
        if tensor is None:
            missing.append(prefix + name)
            continue
        if block is not None:
            tensor = tensor.chunk(3, dim=0)[block]
        if tensor.shape != shape and tensor.numel() == torch.Size(shape).numel():
            tensor = tensor.reshape(shape)  # the VAE's 1x1-conv attention as linear layers
        if tensor.shape != shape:
            raise IncompleteModelError(
                f"checkpoint {path}: {prefix + name} is {list(tensor.shape)}, the {part} "
                f"expects {list(shape)}"
            )
        out[key] = tensor
    if missing:
        raise IncompleteModelError(
            f"checkpoint {path}: the {part} lacks {len(missing)} tensor(s): "
            + ", ".join(missing[:3])
            + (" ..." if len(missing) > 3 else "")
        )
    return out


def _unused(used: set[str], state: Tensors, prefix: str) -> list[str]:
    return sorted(k for k in state if k.startswith(prefix) and k not in used)


def convert_ldm(
    state: Tensors,
    configs: LdmConfigs,
    unet_keys: Mapping[str, torch.Size],
    vae_keys: Mapping[str, torch.Size],
    text_keys: Mapping[str, torch.Size],
    path: str = "<state dict>",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """State dicts for the diffusers UNet and VAE and the transformers text encoder.

    ``*_keys`` are the target models' parameter names and shapes (``text_keys`` as the model
    names them, with or without transformers 4's ``text_model.`` prefix). A tensor the models
    need but the file lacks, or a UNet/VAE tensor of the file that no parameter takes (another
    architecture, e.g. SD-XL), raises :class:`IncompleteModelError` naming it.
    """
    unet = _gather(
        unet_keys,
        state,
        lambda k: (unet_ldm_name(k, configs.unet), None),
        UNET_PREFIX,
        "UNet",
        path,
    )
    vae = _gather(
        vae_keys, state, lambda k: (vae_ldm_name(k, configs.vae), None), VAE_PREFIX, "VAE", path
    )
    inner = {k.removeprefix("text_model."): k for k in text_keys}
    text = _gather(
        {k: text_keys[full] for k, full in inner.items() if not k.endswith("position_ids")},
        state,
        lambda k: text_ldm_name(k, configs.text_kind),
        configs.text_prefix,
        "text encoder",
        path,
    )
    text = {inner[k]: v for k, v in text.items()}
    for prefix, part, names in (
        (UNET_PREFIX, "UNet", {UNET_PREFIX + unet_ldm_name(k, configs.unet) for k in unet_keys}),
        (VAE_PREFIX, "VAE", {VAE_PREFIX + vae_ldm_name(k, configs.vae) for k in vae_keys}),
    ):
        extra = [k for k in _unused(names, state, prefix) if not k.startswith(VAE_PREFIX + "loss.")]
        if extra:
            raise IncompleteModelError(
                f"checkpoint {path}: {len(extra)} {part} tensor(s) fit no SD 1.x/2.x layer "
                f"(e.g. {extra[0]}); this is another architecture"
            )
    return unet, vae, text
