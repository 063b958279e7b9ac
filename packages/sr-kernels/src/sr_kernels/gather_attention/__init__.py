"""Gather attention: reference (oracle), Triton forward/backward kernels, and the dispatching op."""
