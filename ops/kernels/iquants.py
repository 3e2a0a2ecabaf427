"""Placeholder: filled in by the kernel work."""
KERNELS = {}
RANDOM_BLOCKS = {}
