import pytest
import torch

from zsvss_nb.backbones import describe_spec, load_backbone
from zsvss_nb.backbones.sd.model import LATENT_SCALE
from zsvss_nb.backbones.sd.weights import save_folder, save_single_file
from zsvss_nb.errors import ConfigError, IncompleteModelError, ModelNotFoundError


def _unet_out(backbone, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    emb = backbone.prompt_embedding("").repeat(2, 1, 1)
    with torch.inference_mode():
        return backbone.unet(x, torch.tensor([119.0, 119.0]), encoder_hidden_states=emb).sample


def test_tiny_has_sd21_block_structure(tiny):
    unet = tiny.unet
    assert len(unet.up_blocks) == 4
    assert not hasattr(unet.up_blocks[0], "attentions")
    for up in (1, 2, 3):
        assert len(unet.up_blocks[up].attentions) == 3
    assert tiny.text_encoder is not None and tiny.vae is not None
    assert not any(p.requires_grad for p in unet.parameters())


def test_tiny_is_seeded(tiny):
    other = load_backbone("tiny", device="cpu")
    assert torch.equal(_unet_out(tiny), _unet_out(other))
    assert tiny.fingerprint() == other.fingerprint()


def test_encode_decode_shapes(tiny):
    images = torch.rand(3, 3, 128, 192)
    z = tiny.encode(images, torch.Generator().manual_seed(1))
    assert z.shape == (3, 4, 16, 24)
    out = tiny.decode(z)
    assert out.shape == (3, 3, 128, 192) and out.min() >= 0 and out.max() <= 1
    assert LATENT_SCALE == 0.18215


def test_diffusers_folder_round_trip(tiny, tmp_path):
    save_folder(tiny, tmp_path / "model")
    loaded = load_backbone(tmp_path / "model", device="cpu")
    assert torch.allclose(_unet_out(tiny), _unet_out(loaded), atol=1e-6)
    assert torch.allclose(tiny.prompt_embedding(""), loaded.prompt_embedding(""), atol=1e-6)
    assert loaded.identity["format"] == "diffusers"


def test_single_file_round_trip(tiny, tmp_path):
    path = save_single_file(tiny, tmp_path / "tiny.safetensors")
    loaded = load_backbone(path, device="cpu")
    assert torch.allclose(_unet_out(tiny), _unet_out(loaded), atol=1e-6)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(tiny.decode(z), loaded.decode(z), atol=1e-6)
    assert loaded.identity["format"] == "single-file"
    assert len(loaded.fingerprint()) == 64


def test_folder_missing_component(tiny, tmp_path):
    save_folder(tiny, tmp_path / "model")
    for part in ("vae",):
        for f in (tmp_path / "model" / part).iterdir():
            f.unlink()
        (tmp_path / "model" / part).rmdir()
    with pytest.raises(IncompleteModelError, match="lacks vae"):
        load_backbone(tmp_path / "model", device="cpu")


def test_missing_model_message_says_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_backbone(tmp_path / "nope", device="cpu")
    message = str(err.value)
    assert "nope" in message and "--model" in message and "\n" not in message


def test_bad_checkpoint_files(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(IncompleteModelError, match="empty"):
        load_backbone(empty, device="cpu")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(IncompleteModelError, match="cannot be read"):
        load_backbone(junk, device="cpu")


def test_no_model_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("ZSVSS_MODEL", raising=False)
    monkeypatch.setenv("ZSVSS_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no model configured"):
        load_backbone(None, device="cpu")
    monkeypatch.setenv("ZSVSS_MODEL", "tiny")
    assert describe_spec(None) == {"model": "tiny", "from": "built-in"}


def test_release_text_encoder_keeps_embeddings_and_identity(tmp_path):
    model = load_backbone("tiny")
    before = model.prompt_embedding("").clone()
    fingerprint = load_backbone("tiny").fingerprint()
    model.release_text_encoder(("", "a street"))
    assert model.text_encoder is None
    assert torch.equal(model.prompt_embedding(""), before)
    assert model.prompt_embedding("a street").shape == before.shape
    assert model.fingerprint() == fingerprint
    with pytest.raises(ConfigError, match="'a dog' was not embedded"):
        model.prompt_embedding("a dog")
    with pytest.raises(ConfigError, match="text encoder was released"):
        save_folder(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model.release_text_encoder()  # a second release is a no-op
