"""The package version, in the lowest layer so every stage can record it in what it writes."""

__version__ = "0.1.0"
