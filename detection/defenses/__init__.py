"""Detectors. Importing this package registers every detector module."""

from detection.defenses import ac, ct, ss  # noqa: F401
