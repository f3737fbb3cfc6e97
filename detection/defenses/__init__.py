"""Detectors. Importing this package registers every detector module."""

from detection.defenses import abl, ac, beatrix, ct, ensemble, scan, spectre, ss, strip  # noqa: F401
