"""`ddpm-lesion utility`: does a classifier trained with the synthetic rows do better on real held-out
patients? Imports `sample` and below.
"""
