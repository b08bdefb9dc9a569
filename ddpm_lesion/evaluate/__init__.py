"""Judging images: feature extractors, sample-quality metrics as pure functions, the copy detector and
the evaluation report. Works on any folder of images, so it imports only `data` and `core`.
"""
