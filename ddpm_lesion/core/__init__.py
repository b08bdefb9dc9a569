"""Generic helpers every stage uses: the user-facing error type, atomic file writes, typed configs that
become flags, multi-process decisions, figures and contact sheets. Imports nothing else of the package.
"""
