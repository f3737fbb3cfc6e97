"""Detectors. Importing this package registers every detector module."""

from detection.defenses import abl, ac, beatrix, ct, scan, spectre, ss, strip  # noqa: F401
