"""Detectors. Importing this package registers every detector module."""

from detection.defenses import ac, ct, spectre, ss  # noqa: F401
