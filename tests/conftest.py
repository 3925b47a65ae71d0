"""Fixtures shared by the test files: the seeded tiny models, built once per test session.

Both are deterministic (seeded weights), so sharing them changes no result; a test that
changes a model (patches a method, fills a cache) restores it before it ends.
"""

import pytest

from zsvss_nb.backbones import load_backbone


@pytest.fixture(scope="session")
def tiny():
    """The seeded tiny SD model ("tiny": SD 2.1-base's block structure, few channels)."""
    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_svd():
    """The seeded tiny Stable Video Diffusion model ("tiny-svd")."""
    return load_backbone("tiny-svd", device="cpu")
