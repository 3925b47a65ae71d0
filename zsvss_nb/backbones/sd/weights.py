"""Stable Diffusion weights: the tiny and random builders, and loaders for every source.

Weights are never downloaded by name from code we ship: a user points ``--model`` /
``ZSVSS_MODEL`` at what they have: a diffusers folder, a zsvss single file
(:func:`save_single_file`), an original-layout checkpoint (``v2-1_512-ema-pruned.safetensors``,
read by :mod:`.ldm`) or a repository id. ``"tiny"`` is a seeded random-weight model with SD
2.1-base's block structure (4 up blocks, three transformer layers in up_blocks 1-3, text encoder
and VAE) that runs on a CPU in seconds; ``"sd21-base-random"`` is SD 2.1-base's exact
architecture with seeded random weights (benchmarks).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError, IncompleteModelError, ModelNotFoundError
from ..checkpoints import (
    CHECKPOINT_SUFFIXES,
    file_identity,
    folder_identity,
    freeze,
    is_repo_id,
    load_parts,
    missing_parts,
    not_found_message,
    read_state_dict,
    save_prefixed,
    split_prefixed,
    write_scheduler_folder,
)
from .ldm import convert_ldm, ldm_configs
from .model import LATENT_SCALE, SD_COMPONENTS, StableDiffusion

BUILTIN = ("tiny", "sd21-base-random")

# SD 2.1-base's component configs (the published diffusers configs), used to build the
# architecture for the random-weight benchmark model.
# SD 2.1-base's component configs (the published diffusers configs), used to build the
# architecture for single-file checkpoints and for the random-weight benchmark model.
SD21_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}


SD21_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": LATENT_SCALE,
}


SD21_TEXT = {  # OpenCLIP ViT-H text tower as diffusers stores it (23 layers: penultimate)
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}


# "tiny": SD 2.1-base's block structure with few channels (and one resnet per VAE level)
TINY_UNET = {
    **SD21_UNET,
    "sample_size": 16,
    "block_out_channels": [16, 32, 32, 32],
    "attention_head_dim": [2, 4, 4, 4],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}
TINY_VAE = {
    **SD21_VAE,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 128,
}
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 32,
}


TINY_SEED = 0


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2/CLIP convention)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_tokenizer():
    """A CLIP BPE tokenizer over single bytes only (no merges): enough for the tiny model."""
    from transformers import CLIPTokenizer

    chars = _byte_symbols()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:  # transformers 5: the tokenizer takes the vocabulary itself
        return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)
    except TypeError:  # transformers 4: it reads vocab.json and merges.txt
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
            (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
            return CLIPTokenizer(
                Path(tmp) / "vocab.json",
                Path(tmp) / "merges.txt",
                pad_token="!",
                model_max_length=77,
            )


def build_sd(
    unet_config: dict, vae_config: dict, text_config: dict, tokenizer, seed: int | None
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Build SD's UNet, VAE and text encoder from their configs with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_cfg = dict(text_config)
        text_cfg.setdefault("vocab_size", len(tokenizer))
        text = CLIPTextModel(
            CLIPTextConfig(
                **text_cfg,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    return unet, vae, text


def tiny_backbone(device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    """The seeded random-weight model with SD 2.1-base's block structure (see module doc)."""
    tokenizer = tiny_tokenizer()
    unet, vae, text = build_sd(TINY_UNET, TINY_VAE, TINY_TEXT, tokenizer, TINY_SEED)
    return _assemble(
        unet, vae, text, tokenizer, device, dtype, {"name": "tiny", "source": "built-in"}
    )


def sd21_random_backbone(device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    """SD 2.1-base's exact architecture with seeded random weights (benchmarks; no download)."""
    tokenizer = tiny_tokenizer()
    text_cfg = dict(SD21_TEXT)
    text_cfg["vocab_size"] = len(tokenizer)
    unet, vae, text = build_sd(SD21_UNET, SD21_VAE, text_cfg, tokenizer, TINY_SEED)
    return _assemble(
        unet,
        vae,
        text,
        tokenizer,
        device,
        dtype,
        {"name": "sd21-base-random", "source": "built-in"},
    )


def _assemble(unet, vae, text, tokenizer, device, dtype, identity) -> StableDiffusion:
    freeze(unet, vae, text)
    unet.to(device=device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    vae.to(device=device)  # METHOD 1.8: the VAE stays float32
    text.to(device=device)
    identity = {"kind": "sd", **identity}
    return StableDiffusion(
        "sd",
        torch.device(device),
        dtype,
        identity,
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
    )


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = missing_parts(folder, SD_COMPONENTS)
    if missing:
        raise IncompleteModelError(
            f"model folder {folder} lacks {', '.join(missing)}: a diffusers Stable Diffusion "
            f"folder needs {', '.join(SD_COMPONENTS)} (save one with "
            "StableDiffusionPipeline.save_pretrained)"
        )
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    except (OSError, ValueError, KeyError) as err:
        raise IncompleteModelError(f"model folder {folder} could not be loaded: {err}") from err
    backbone = _assemble(unet, vae, text, tokenizer, device, dtype, folder_identity(folder))
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        cfg = json.loads(sched.read_text())
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"):
            if key in cfg:
                backbone.scheduler_config[key] = cfg[key]
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError(
                f"{folder} is a {cfg['prediction_type']}-prediction model; the method uses "
                "SD 2.1-base (epsilon prediction), not the 768-px v-model (METHOD 4.1 item 6)"
            )
    return backbone


def _require_text_encoder(backbone: StableDiffusion) -> None:
    if backbone.text_encoder is None:
        raise ConfigError(
            "backbone: its text encoder was released (release_text_encoder); reload to save it"
        )


def save_single_file(backbone: StableDiffusion, path: str | Path) -> Path:
    """Write an SD backbone as one ``.safetensors`` file (prefixed parts, configs in metadata)."""
    _require_text_encoder(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        backbone.tokenizer.save_pretrained(tmp)
        tokenizer = json.dumps(
            {name.name: name.read_text() for name in Path(tmp).iterdir() if name.is_file()}
        )
    parts = {"unet": backbone.unet, "vae": backbone.vae, "text_encoder": backbone.text_encoder}
    return save_prefixed(Path(path), parts, {"name": backbone.name, "tokenizer": tokenizer})


def _load_zsvss_single(path, tensors, meta, device, dtype) -> StableDiffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    states = split_prefixed(path, tensors, meta, ("unet", "vae", "text_encoder"))
    unet = UNet2DConditionModel.from_config(json.loads(meta["unet_config"]))
    vae = AutoencoderKL.from_config(json.loads(meta["vae_config"]))
    text = CLIPTextModel(CLIPTextConfig(**json.loads(meta["text_encoder_config"])))
    load_parts(path, {"unet": unet, "vae": vae, "text_encoder": text}, states)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text_ in json.loads(meta.get("tokenizer", "{}")).items():
            (Path(tmp) / name).write_text(text_)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    identity = file_identity(path, meta.get("name", path.stem))
    return _assemble(unet, vae, text, tokenizer, device, dtype, identity)


def _load_ldm_single(
    path: Path, tensors: dict[str, torch.Tensor], device, dtype
) -> StableDiffusion:
    """An original (LDM/sgm) SD 1.x/2.x checkpoint such as v2-1_512-ema-pruned.safetensors.

    The architecture is read off the tensor shapes and every tensor is mapped by name
    (:mod:`zsvss_nb.backbones.sd.ldm`), so no conversion library and no network are involved.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    configs = ldm_configs(tensors, str(path))
    tokenizer = CLIPTokenizer.from_pretrained(_find_tokenizer(path))
    unet = UNet2DConditionModel(**configs.unet)
    vae = AutoencoderKL(**configs.vae)
    text = CLIPTextModel(
        CLIPTextConfig(
            **configs.text,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    states = convert_ldm(
        tensors,
        configs,
        *({k: v.shape for k, v in m.state_dict().items()} for m in (unet, vae, text)),
        path=str(path),
    )
    tensors.clear()  # the file's tensors are no longer needed: halve the peak memory
    for module, state in zip((unet, vae, text), states, strict=True):
        module.load_state_dict(state, strict=False)
    identity = file_identity(path, path.stem, "ldm-single-file")
    identity["family"] = "sd2" if configs.text_kind == "openclip" else "sd1"
    return _assemble(unet, vae, text, tokenizer, device, dtype, identity)


def _find_tokenizer(path: Path) -> Path:
    candidates = [path.parent / "tokenizer", path.with_suffix("") / "tokenizer"]
    env = os.environ.get("ZSVSS_TOKENIZER")
    if env:
        candidates.insert(0, Path(env))
    for candidate in candidates:
        if (candidate / "vocab.json").is_file() or (candidate / "tokenizer.json").is_file():
            return candidate
    raise IncompleteModelError(
        f"checkpoint {path} needs a CLIP tokenizer folder (vocab.json and merges.txt, or "
        "tokenizer.json); looked in "
        + ", ".join(str(c) for c in candidates)
        + ": copy the tokenizer/ folder of any SD 2.x diffusers model there or set ZSVSS_TOKENIZER"
    )


def _load_file(path: Path, device, dtype) -> StableDiffusion:
    if path.stat().st_size == 0:
        raise IncompleteModelError(f"checkpoint {path} is empty (0 bytes)")
    try:
        tensors, meta = read_state_dict(path)
    except Exception as err:
        raise IncompleteModelError(f"checkpoint {path} cannot be read: {err}") from err
    if meta.get("zsvss_format"):
        return _load_zsvss_single(path, tensors, meta, device, dtype)
    if any(k.startswith("model.diffusion_model.") for k in tensors):
        return _load_ldm_single(path, tensors, device, dtype)
    raise IncompleteModelError(
        f"checkpoint {path} holds neither an SD UNet (model.diffusion_model.*) nor a zsvss "
        "single-file model"
    )


def _load_repo(repo_id: str, device, dtype) -> StableDiffusion:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"])
        )
    except Exception as err:
        raise ModelNotFoundError(not_found_message(repo_id, str(err).splitlines()[0])) from err
    backbone = _load_folder(folder, device, dtype)
    backbone.identity.update({"name": repo_id, "repo_id": repo_id})
    return backbone


def save_folder(backbone: StableDiffusion, folder: str | Path) -> Path:
    """Write an SD backbone as a diffusers folder: UNet, VAE, text encoder, tokenizer, scheduler."""
    _require_text_encoder(backbone)
    folder = Path(folder)
    backbone.unet.save_pretrained(folder / "unet")
    backbone.vae.save_pretrained(folder / "vae")
    backbone.text_encoder.save_pretrained(folder / "text_encoder")
    backbone.tokenizer.save_pretrained(folder / "tokenizer")
    write_scheduler_folder(folder, backbone.scheduler_config)
    return folder


def load_sd(name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    """An SD backbone from a built-in name, a diffusers folder, a checkpoint file or a repo id."""
    if name == "tiny":
        return tiny_backbone(device, dtype)
    if name == "sd21-base-random":
        return sd21_random_backbone(device, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path, device, dtype)
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise IncompleteModelError(
                f"model file {path} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
            )
        return _load_file(path, device, dtype)
    if is_repo_id(name):
        return _load_repo(name, device, dtype)
    raise ModelNotFoundError(not_found_message(name, "no such file or folder"))
