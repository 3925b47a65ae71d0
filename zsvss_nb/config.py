"""Frozen configuration of every stage, with the paper's values as defaults.

Each field's comment points at the section of METHOD.md (shared with the project) that fixes its
default. Change a value with ``cfg.replace(k=10)``: top-level fields and fields of the stage
configs are both accepted, the latter routed to the one stage config that owns the name.

Block numbers follow the reference code's decoder numbering (``output_blocks`` 0-11): blocks 3-5
are ``up_blocks[1].attentions[0..2]``, 6-8 ``up_blocks[2]...`` (H/16) and 9-11 ``up_blocks[3]...``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from .errors import ConfigError
from .fieldtypes import SEED_RANGE, ConfigSection, batch_size, choices


@dataclass(frozen=True)
class FeatureConfig(ConfigSection):
    """Stage 1: noising, the feature pass and which attention tensors become features."""

    _stage: ClassVar[str] = "features"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "guidance_scale": (0.0, 100.0),  # CFG: noise + s (cond - uncond) stays finite in fp16
        "seed": SEED_RANGE,
    }

    num_inference_steps: int = 25  # METHOD 1.2: 25 Euler steps, trailing spacing
    start_step: int = 22  # METHOD 1.2: t* = step index 22 (DDPM t = 119, sigma 0.387)
    feature_step: int = 24  # METHOD 1.3: q is read at the last step (t = 39)
    guidance_scale: float = 5.0  # METHOD 1.2: VanillaCFG scale 5, cond = "" / uncond = zeros
    prompt: str = ""  # METHOD 1.2: the conditional embedding is the empty prompt's
    blocks: tuple[int, ...] = (6, 7, 8)  # METHOD 1.3: mean of output blocks 6, 7, 8
    aggregation: Literal["mean", "concat"] = "mean"  # METHOD 1.3: element-wise mean
    normalisation: Literal["linf", "l2", "none"] = "linf"  # METHOD 1.3: f / max|f| per token
    refine_block: int = 7  # METHOD 1.6: refinement tracks on block-7 q (L2-normalised there)
    seed: int = 1  # METHOD 1.8: seed 1, reset before every window
    sample_posterior: bool = True  # METHOD 1.1: VAE posterior sample, not mode
    size_policy: Literal["resize64", "pad64"] = "resize64"  # METHOD 1.1: resize to x64
    resize_filter: Literal["pil-bicubic", "bilinear"] = "pil-bicubic"  # METHOD 1.1: PIL's
    # default Image.resize filter (antialiased bicubic); "bilinear" = zsvss 0.1's resize
    max_side: int | None = None  # beyond the paper: downscale so the longer side <= this
    dinov2_layer: int = -1  # comparison backbone only: which ViT layer's patch tokens (-1 = last)
    vae_tile: int = 128  # beyond the paper: a latent of more than 128x128 tokens (a 1024x1024
    # frame) is VAE-encoded and decoded in overlapping 128x128-token tiles, diffusers' VAE
    # tiling, so 4000x3000 frames finish; smaller latents are untouched; 0 = never tile

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.start_step < self.num_inference_steps:
            raise ConfigError(
                f"start_step={self.start_step} must lie in [0, {self.num_inference_steps})"
            )
        if not self.start_step <= self.feature_step < self.num_inference_steps:
            raise ConfigError(
                f"feature_step={self.feature_step} must lie in "
                f"[start_step={self.start_step}, {self.num_inference_steps})"
            )
        if not self.blocks:
            raise ConfigError("blocks must name at least one decoder block")
        for b in (*self.blocks, self.refine_block):
            if not 3 <= b <= 11:
                raise ConfigError(f"block {b} has no attention: use decoder blocks 3..11")
        if self.aggregation == "mean" and len({_block_res(b) for b in self.blocks}) > 1:
            raise ConfigError(f"blocks {self.blocks} have different resolutions; cannot average")
        if self.vae_tile < 0:
            raise ConfigError(f"vae_tile={self.vae_tile} must be >= 0 (0 = never tile)")
        if self.max_side is not None and self.max_side < 1:
            raise ConfigError(f"max_side={self.max_side} must be positive (or none)")


def _block_res(block: int) -> int:
    """Index of the up-block (1, 2 or 3) that holds reference decoder block ``block``."""
    return block // 3


@dataclass(frozen=True)
class ContextConfig(ConfigSection):
    """Stage 2a: k-means initialisation and the autoregressive KNN scene context model."""

    _stage: ClassVar[str] = "context"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "kmeans_tol": (0.0, 1.0),  # relative to the features' variance
        "spawn_threshold": (1e-6, 1e4),  # a feature distance (normalised features)
        "merge_threshold": (0.0, 1e3),  # a multiple of the clusters' width
        "seed": SEED_RANGE,
    }

    k: int = 20  # METHOD 1.4: --num_masks 20 for VSPW
    n_init: int = 10  # METHOD 1.4: sklearn KMeans(n_init=10)
    kmeans_iters: int = 300  # sklearn's default max_iter
    kmeans_tol: float = 1e-4  # sklearn's default tol (relative to the data's variance)
    kmeans_scope: Literal["window", "frame1"] = "window"  # METHOD 1.4/4.1: fit on all B frames
    knn_k: int = 4  # METHOD 1.4: KNeighborsClassifier(n_neighbors=4), uniform, Euclidean
    knn_chunk: int = 4096  # query rows per distance block; bounds memory, not results
    memory: Literal["last", "bank"] = "last"  # METHOD 1.5: refit on the last window only
    propagation: Literal["knn", "per-frame-kmeans"] = "knn"  # METHOD 1.5: the KNN scene
    # context; "per-frame-kmeans" is the image-method baseline (independent k-means per frame,
    # ids not aligned over time; evaluate it under the hungarian or majority protocol)
    memory_size: int = 50_000  # "bank" only: most recent reference tokens kept
    spawn_threshold: float | None = None  # beyond the paper: new label when NN distance exceeds
    ignore_index: int = 255  # METHOD 4.2: void ids never become a class
    seed: int = 0  # k-means++ seeding
    merge_threshold: float | None = None  # beyond METHOD 1.4: context.merge_clusters
    relabel: Literal["token", "cluster"] = "token"  # METHOD 1.5; "cluster": relabel_clusters

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ConfigError(f"k={self.k} must be at least 1")
        if self.n_init < 1 or self.kmeans_iters < 1:
            raise ConfigError("n_init and kmeans_iters must be at least 1")
        if self.knn_k < 1:
            raise ConfigError(f"knn_k={self.knn_k} must be at least 1")
        if self.kmeans_tol < 0:
            raise ConfigError(f"kmeans_tol={self.kmeans_tol} must be >= 0")
        if self.knn_chunk < 1 or self.memory_size < 1 or (self.merge_threshold or 0) < 0:
            raise ConfigError("knn_chunk, memory_size must be >= 1 and merge_threshold >= 0")
        if self.spawn_threshold is not None and self.spawn_threshold <= 0:
            raise ConfigError(f"spawn_threshold={self.spawn_threshold} must be > 0 (or none)")


@dataclass(frozen=True)
class RefineConfig(ConfigSection):
    """Stage 2b: correspondence-based refinement (dense tracks + majority vote), METHOD 1.6.

    ``paper_compat=True`` reproduces the reference exactly: the signed hop test (only large moves
    down/right are filtered) and the t = 0 weighting quirk (the first hop compares with frame 1
    only). The default uses the absolute displacement test and weights the first hop like the
    others (S_0 = cos to the previous frame, which is frame 1).
    """

    _stage: ClassVar[str] = "refine"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "min_survival": (0.0, 1.0),  # a share of the tracks
    }

    enabled: bool = True
    hop_threshold: int = 1  # METHOD 1.6: a hop of more than 1 cell drops the track
    use_aux: bool = True  # METHOD 1.6: blend similarity to frame 1 with weight 1/(t+1)
    paper_compat: bool = False  # True: signed hop test and t = 0 quirk, as the reference
    min_survival: float | None = None  # beyond METHOD 1.6: raise the threshold to keep this share

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hop_threshold < 0 or not 0 <= (self.min_survival or 0) <= 1:
            raise ConfigError("hop_threshold must be >= 0 and min_survival in [0, 1] (or none)")


@dataclass(frozen=True)
class UpsampleConfig(ConfigSection):
    """Stage 3: masked modulation (METHOD 1.7) or a cheap baseline.

    The difference map D_c = blur(||I+ - I-||_2) is computed in float by default. With
    ``paper_compat=True`` it reproduces the reference's quirks: the decodes are quantised to
    uint8, subtracted and squared with uint8 wrap-around, and the blurred map is quantised to
    8 bits, so published numbers can be reproduced (METHOD 1.7 step 3, 4.1 item 7).
    """

    _stage: ClassVar[str] = "upsample"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "lam": (-1000.0, 1000.0),  # scales attention outputs: 1000x stays finite in fp16
        "blur_sigma": (0.01, 100.0),  # Gaussian taps exp(-(x / sigma)^2 / 2)
        "outside_weight": (0.0, 1.0),
        "bilateral_sigma_space": (0.01, 100.0),  # coarse cells; 1 / (2 sigma^2) in float32
        "bilateral_sigma_color": (0.001, 100.0),  # [0, 1] RGB; 1 / (2 sigma^2) in float32
    }

    method: Literal["modulation", "bilinear", "nearest", "bilateral"] = "modulation"
    lam: float = 50.0  # METHOD 1.7: lambda = 50 on the CLI (sample() default 10 is overridden)
    modulated_blocks: tuple[int, ...] = (7,)  # METHOD 1.7: output block 7 (H/16)
    tensor: Literal["attn2_out", "attn1_out"] = "attn2_out"  # METHOD 1.7: cross-attn output
    modulation_steps: tuple[int, ...] = (22,)  # METHOD 1.2: modulate at t* only
    inject: bool = True  # METHOD 1.7b: inject stored q/k at every step >= t*
    injected_blocks: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10, 11)  # METHOD 1.7b: out 1-11
    blend_steps: tuple[int, ...] = (22, 23)  # METHOD 1.2: blend after steps t* and t*+1
    blur_kernel: int = 5  # METHOD 1.7: Gaussian 5x5
    blur_sigma: float = 3.0  # METHOD 1.7: sigma 3
    outside_weight: float = 0.7  # METHOD 1.7 step 5: filtered output weight outside the mask
    output: Literal["filtered", "raw"] = "filtered"  # METHOD 1.7: the more plausible one
    modulation_batch: int | Literal["auto"] = "auto"  # (class, sign, frame) triples per UNet
    # call (x2 samples with CFG); bounds memory, not results; "auto": planned from the device's
    # free memory (backbones/memory.py); 0 = all at once
    execution: Literal["batched", "reference"] = "batched"  # "reference": the reference code's
    # structure (one pass per class and sign over all frames, every frame decoded, the
    # unmodulated pass decoded too, fp32 VAE) without its disk traffic, for benchmarks
    skip_empty: bool = True  # skip (class, frame) pairs whose mask is empty: their D is 0
    decode_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # METHOD 1.8: fp32 VAE
    decode_batch: int | Literal["auto"] = "auto"  # frames per VAE decode call ("batched"
    # only); bounds memory, not results; "auto": planned from free memory; 0 = all
    decode_margin: int | None = None  # None: decode whole frames (METHOD 1.7); N (beyond the
    # paper, "batched" only): decode each (class, frame) pair on its mask's bounding box grown
    # by N latent cells (8 px each), D = 0 outside it
    share_prefix: bool = True  # "batched" only: at the first modulation step every pass starts
    # from z_{t*}, so the UNet up to the modulated layer computes exactly what the feature pass
    # computed; replay those module outputs (cached by extract) instead of recomputing them
    reuse_attention: bool = True  # "batched" only: the injected layers' softmax(q k^T) once
    # per (CFG half, frame, step), not per sample (their q and k are the unmodulated pass's);
    # exact up to float rounding
    unet_autocast: Literal["none", "bfloat16", "float16"] = "none"  # "none": the modulated
    # passes compute in SegmentConfig.precision like the feature pass; a dtype runs them alone
    # under that autocast instead (beyond the paper; "batched" execution only)
    modulation_cfg: bool = True  # False (beyond the paper): the modulated passes run the
    # conditional branch only (half the UNet work); the feature pass keeps its guidance
    neighbourhood_classes: bool = False  # beyond the paper: a pixel competes only among the
    # classes in the 3x3 neighbourhood of its coarse cell; (class, frame) pairs without a
    # competitor anywhere are not modulated
    torch_compile: bool = False  # beyond the paper: torch.compile the UNet for the modulated passes
    bilateral_sigma_space: float = 0.5  # joint-bilateral: spatial sigma in coarse cells
    bilateral_sigma_color: float = 0.1  # joint-bilateral: colour sigma on [0, 1] RGB
    paper_compat: bool = False  # True: uint8 wrap-around difference, 8-bit maps (see above)

    @property
    def uses_bfloat16(self) -> bool:
        """Whether the modulated passes' override or the decode ask for bfloat16."""
        return "bfloat16" in (self.unet_autocast, self.decode_dtype)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ConfigError(f"blur_kernel={self.blur_kernel} must be odd and positive")
        for name in ("modulation_batch", "decode_batch"):
            object.__setattr__(self, name, batch_size(f"upsample.{name}", getattr(self, name)))
        if self.lam == 0:
            raise ConfigError("lam=0 modulates nothing: every difference map would be 0")
        if self.blur_sigma <= 0:
            raise ConfigError(f"blur_sigma={self.blur_sigma} must be > 0")
        if not 0 <= self.outside_weight <= 1:
            raise ConfigError(f"outside_weight={self.outside_weight} must lie in [0, 1]")
        if self.bilateral_sigma_space <= 0 or self.bilateral_sigma_color <= 0:
            raise ConfigError("bilateral_sigma_space and bilateral_sigma_color must be > 0")
        if self.decode_margin is not None and self.decode_margin < 0:
            raise ConfigError(f"decode_margin={self.decode_margin} must be >= 0 or None")


@dataclass(frozen=True)
class SvdConfig(ConfigSection):
    """Stable Video Diffusion backbone only (METHOD 1.2, 1.7): conditioning and decoding.

    The window's first frame conditions the video model (CLIP image embedding and VAE-latent
    concat). Guidance is per frame, linspace(``min_guidance_scale``, features.guidance_scale)
    over the window (``paper_svd`` sets features.guidance_scale = 2.5, the last frame's scale).
    """

    _stage: ClassVar[str] = "svd"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "cond_aug": (0.0, 10.0),  # noise std on the conditioning frame (paper 0.02)
        "min_guidance_scale": (0.0, 100.0),  # as features.guidance_scale
    }

    fps_id: int = 14  # METHOD 1.2: the UNet's first added time id (diffusers' pipeline: fps - 1)
    motion_bucket_id: int = 127  # METHOD 1.2: second added time id
    cond_aug: float = 0.02  # METHOD 1.2: noise on the conditioning frame; third added time id
    min_guidance_scale: float = 1.0  # METHOD 1.2: LinearPredictionGuider, first frame's scale
    modulate_temporal: bool = True  # METHOD 1.7: modulate_layer_type "spatial,temporal"
    decode_frames: int = 1  # METHOD 1.7: frames the temporal VAE decoder sees together; the
    # reference decodes one at a time (1); 0 = the whole window in one decode

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decode_frames < 0:
            raise ConfigError(f"decode_frames={self.decode_frames} must be >= 0 (0 = window)")
        if self.cond_aug < 0:
            raise ConfigError(f"cond_aug={self.cond_aug} must be >= 0")
        if self.min_guidance_scale < 0:
            raise ConfigError(f"min_guidance_scale={self.min_guidance_scale} must be >= 0")
        if self.fps_id < 0 or self.motion_bucket_id < 0:
            raise ConfigError("fps_id and motion_bucket_id must be >= 0")


@dataclass(frozen=True)
class DiffSegConfig(ConfigSection):
    """The ``diffseg-frame`` baseline (Tian et al., CVPR 2024); defaults from google/diffseg.

    Its benchmark notebook runs one UNet evaluation at timestep 300 on the VAE latent (no
    noise added) with the unconditional prompt, merges a 16 x 16 anchor grid in 3 iterations at
    KL threshold 1.1 (COCO-Stuff; 0.9 for Cityscapes) and leaves the K-means refinement off.
    """

    _stage: ClassVar[str] = "diffseg"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "kl_threshold": (1e-6, 1e3),  # a symmetric KL between attention maps (float32)
    }

    timestep: int = 300  # DiffSeg: attention maps from one UNet call at t = 300
    add_noise: bool = False  # the official code feeds the clean latent; True: DDPM-noise it
    anchors: int = 16  # DiffSeg: M = 16, an M x M anchor grid (256 anchors)
    kl_threshold: float = 1.1  # DiffSeg: tau = 1.1 (COCO-Stuff-27; 0.9 for Cityscapes)
    merge_iters: int = 3  # DiffSeg: N = 3 merging iterations (KL_THRESHOLD = [1.1] * 3)
    weighting: Literal["resolution", "uniform"] = "resolution"  # DiffSeg: weight ~ map side
    frames_per_pass: int = 1  # frames per attention pass; bounds memory, not results

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.timestep < 1000:
            raise ConfigError(f"diffseg timestep={self.timestep} must lie in [0, 1000)")
        if self.anchors < 1 or self.merge_iters < 1 or self.frames_per_pass < 1:
            raise ConfigError("diffseg anchors, merge_iters and frames_per_pass must be >= 1")
        if self.kl_threshold <= 0:
            raise ConfigError(f"diffseg kl_threshold={self.kl_threshold} must be positive")
        if self.weighting not in ("resolution", "uniform"):
            raise ConfigError(f"weighting={self.weighting!r}: use 'resolution' or 'uniform'")


@dataclass(frozen=True)
class PropagateConfig(ConfigSection):
    """The ``propagate-first-frame`` reference: label propagation from first-frame GT.

    Defaults are DINO's video-segmentation protocol (Caron et al., ICCV 2021,
    eval_video_segmentation.py), which DIFT reuses: the first frame and the 7 previous frames
    as context, top-5 neighbours within 12 cells, softmax temperature 0.1.
    """

    _stage: ClassVar[str] = "propagate"
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (1e-3, 100.0),  # softmax(cos / T): |cos / T| <= 1000 in float32
    }

    n_last_frames: int = 7  # DINO: --n_last_frames 7 (plus the first frame, always kept)
    radius: int = 12  # DINO: --size_mask_neighborhood 12 (cells, a square window)
    topk: int = 5  # DINO: --topk 5
    temperature: float = 0.1  # DINO: exp(cos / 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_last_frames < 0 or self.radius < 0:
            raise ConfigError("propagate n_last_frames and radius must be >= 0")
        if self.topk < 1:
            raise ConfigError(f"propagate topk={self.topk} must be at least 1")
        if self.temperature <= 0:
            raise ConfigError(f"propagate temperature={self.temperature} must be positive")


STAGES = ("features", "context", "refine", "upsample", "svd", "diffseg", "propagate")


@dataclass(frozen=True)
class SegmentConfig(ConfigSection):
    """Everything one segmentation run needs; presets are classmethods."""

    window: int = 14  # METHOD 1.5: B = 14 frames per window
    features: FeatureConfig = field(default_factory=FeatureConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    upsample: UpsampleConfig = field(default_factory=UpsampleConfig)
    svd: SvdConfig = field(default_factory=SvdConfig)  # used by the SVD backbone only
    diffseg: DiffSegConfig = field(default_factory=DiffSegConfig)  # diffseg-frame only
    propagate: PropagateConfig = field(default_factory=PropagateConfig)  # propagate-first-frame
    preset: str = "paper-sd"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # METHOD 1.8: the UNet (feature
    # and modulated passes) under torch.autocast, fp16 on CUDA; "auto" = fp16 on CUDA, fp32 on
    # the CPU (bf16 where native only once measured: backbones.precision.AUTO_CPU_BF16). The VAE
    # decode has its own upsample.decode_dtype.

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ConfigError(f"window={self.window} must be at least 1")

    @property
    def uses_bfloat16(self) -> bool:
        """Whether the config asks for bfloat16 explicitly (needs native support to pay off)."""
        return self.precision == "bf16" or self.upsample.uses_bfloat16

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def paper_sd(cls) -> SegmentConfig:
        """The paper's SD 2.1-base settings with the reference code's bugs fixed."""
        return cls()

    @classmethod
    def paper_compat(cls) -> SegmentConfig:
        """Reproduce the reference code exactly, bugs included (METHOD 1.6, 1.7)."""
        return cls(
            refine=RefineConfig(paper_compat=True),
            upsample=UpsampleConfig(paper_compat=True),
            context=ContextConfig(ignore_index=-1),
            preset="paper-compat",
        )

    @classmethod
    def fast(cls) -> SegmentConfig:
        """Bilinear upsampling of coarse scores instead of modulation: seconds, not minutes."""
        return cls(upsample=UpsampleConfig(method="bilinear"), preset="fast")

    @classmethod
    def tiny(cls) -> SegmentConfig:
        """Small K and the paper's structure, for the tiny test model and CI smoke runs; fp32, so
        results do not depend on whether the machine has native bf16."""
        return cls(context=ContextConfig(k=5, n_init=2), preset="tiny", precision="fp32")

    @classmethod
    def paper_svd(cls) -> SegmentConfig:
        """The paper's Stable Video Diffusion img2vid settings (METHOD 1.2, 1.7, 1.8)."""
        return cls(
            features=FeatureConfig(
                start_step=17,  # METHOD 1.2: t* = 17 (sigma 1.273)
                feature_step=24,  # METHOD 1.2: last step (sigma 0.002)
                guidance_scale=2.5,  # METHOD 1.2: last frame's scale of linspace(1.0, 2.5)
                blocks=(8, 7, 6),  # METHOD 1.8: mean of output blocks 8, 7, 6
                refine_block=7,  # METHOD 1.8: CBR on block-7 q
            ),
            upsample=UpsampleConfig(
                lam=50.0,  # METHOD 1.7
                modulated_blocks=(8,),  # METHOD 1.7: output block 8
                tensor="attn1_out",  # METHOD 1.7: self-attention output (spatial and temporal)
                modulation_steps=(17,),  # METHOD 1.2: modulate at step 17 only
                blend_steps=tuple(range(17, 25)),  # METHOD 1.2: blend after every step 17..24
            ),
            preset="paper-svd",
        )

    @classmethod
    def dinov2(cls) -> SegmentConfig:
        """The DINOv2 comparison backbone's settings, measured best in the README's DINOv2
        section: frames downscaled to 448 px on the longer side (the ViT's 37x37 position grid),
        last-layer patch tokens, L-inf normalisation, bilinear upsampling (no modulation)."""
        return cls(
            features=FeatureConfig(max_side=448, dinov2_layer=-1, normalisation="linf"),
            upsample=UpsampleConfig(method="bilinear"),
            preset="dinov2",
        )

    @classmethod
    def from_preset(cls, name: str) -> SegmentConfig:
        """A preset by its CLI name: paper-sd, paper-compat, paper-svd, dinov2, fast, tiny."""
        presets = {
            "dinov2": cls.dinov2,
            "paper-sd": cls.paper_sd,
            "paper-compat": cls.paper_compat,
            "fast": cls.fast,
            "tiny": cls.tiny,
            "paper-svd": cls.paper_svd,
        }
        if name not in presets:
            raise ConfigError(f"preset {name!r} is not known; choose from {sorted(presets)}")
        return presets[name]()

    # -- flat replace ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> SegmentConfig:
        """A copy with ``changes``; names of stage-config fields are routed to their stage.

        ``cfg.replace(k=10, lam=20.0)`` sets ``context.k`` and ``upsample.lam``. A name that
        several stages share (``seed``, ``paper_compat``) must be given through the stage,
        e.g. ``cfg.replace(refine=cfg.refine.replace(paper_compat=True))``.
        """
        top = {f.name for f in fields(self)}
        direct = {k: v for k, v in changes.items() if k in top}
        routed: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key in top:
                continue
            owners = [
                name for name in STAGES if key in {f.name for f in fields(getattr(self, name))}
            ]
            if not owners:
                raise ConfigError(
                    f"no config field is called {key!r}; name a stage's field as "
                    f"<stage>.<field> (stages: {', '.join(STAGES)}; top level: "
                    f"{', '.join(sorted(top - set(STAGES)))})"
                )
            if len(owners) > 1:
                raise ConfigError(f"{key!r} is a field of {owners}; set it through the stage")
            routed.setdefault(owners[0], {})[key] = value
        for stage, stage_changes in routed.items():
            base = direct.get(stage, getattr(self, stage))
            direct[stage] = base.replace(**stage_changes)
        return dataclasses.replace(self, **direct)

    def override(self, name: str, text: str) -> SegmentConfig:
        """A copy with field ``name`` (``"k"``, or ``"stage.field"``) set from command-line
        ``text``, parsed by the field's declared type and validated (``--set NAME=VALUE``)."""
        stage, _, key = name.rpartition(".")
        if stage:
            if stage not in STAGES:
                raise ConfigError(f"--set {name}: unknown stage {stage!r}; use {choices(STAGES)}")
            sub = getattr(self, stage)
            return self.replace(**{stage: sub.replace(**{key: sub.parse_field(key, text)})})
        if key in {f.name for f in fields(self)} and key not in STAGES:
            return self.replace(**{key: self.parse_field(key, text)})
        owners = [s for s in STAGES if key in {f.name for f in fields(getattr(self, s))}]
        if len(owners) == 1:
            return self.replace(**{key: getattr(self, owners[0]).parse_field(key, text)})
        return self.replace(**{key: text})  # unknown or ambiguous: replace() says which

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentConfig:
        """Inverse of :meth:`to_dict` (as stored in manifest.json).

        A config written before ``precision`` existed ran the UNet in float32, so it loads as
        ``precision="fp32"``.
        """
        data = {"precision": "fp32", **data}
        sub = {
            "features": FeatureConfig,
            "context": ContextConfig,
            "refine": RefineConfig,
            "upsample": UpsampleConfig,
            "svd": SvdConfig,
            "diffseg": DiffSegConfig,
            "propagate": PropagateConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sub and not isinstance(value, dict):
                raise ConfigError(f"config {key!r} must be a mapping of its fields")
            if key in sub:  # lists (JSON) become tuples in the field check
                kwargs[key] = sub[key]().replace(**value)
            else:
                kwargs[key] = value
        return cls().replace(**kwargs)
