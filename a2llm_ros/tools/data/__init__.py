"""Datasets: the FLAME-QA format, the espeak-ng synthetic builder, the real-asset importer."""
