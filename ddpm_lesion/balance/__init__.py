"""`ddpm-lesion balance` and `split`: labelled training sets topped up with synthetic rows, patient-level
splits, duplicate checks. Imports `train` and below.
"""
