"""Diffusion-TS: network, diffusion process, samplers, trainer. Independent of network data."""
