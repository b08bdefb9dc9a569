"""The network and its noise schedule: loading pretrained UNets and schedulers (never a silent fallback)
and the class-conditioning added to them. Imports `data` and `core`.
"""
