"""Stable Video Diffusion img2vid as a zsvss backbone (the paper's second variant)."""
