"""Thin streaming client: frame sources, Triton streaming, forwarding to the tracker."""
