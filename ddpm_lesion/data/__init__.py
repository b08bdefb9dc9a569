"""Images and labels in: safe decoding, labels CSVs, the cached training tensor, evaluation image sets,
and the procedural demo lesions. Imports only `core`.
"""
