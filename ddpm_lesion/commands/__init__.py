"""The `ddpm-lesion` command line: argument parsing and dispatch, nothing else. The top layer:
it may import every other sub-package, and none may import it.
"""
