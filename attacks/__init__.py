"""Gradient inversion on plain payloads (no Flower): gradients, objectives, a batched
L-BFGS, engines, label recovery, the threat model and scoring.

The entry point is :func:`attacks.inversion.invert_gradients`.
"""
