"""Triton-side code: server supervision, tiling, pre/post-processing."""
