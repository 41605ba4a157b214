"""Operator tools: the Triton pool and the A/B rollout CLI, on top of client, tracker and serving."""
