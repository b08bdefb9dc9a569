"""Turning a model into images: samplers as pure functions, sharded resumable generation with
provenance, and the measured choice of the fastest sampler. Imports `model`, `evaluate` and below.
"""
