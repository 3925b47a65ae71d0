"""Stable Diffusion 1.x/2.x as a zsvss backbone (the paper's: SD 2.1-base)."""
