"""Segmentation models: architectures, training, export, Triton repository builder."""
