"""Detectors. Importing this package registers every detector module."""

from detection.defenses import ac, ss  # noqa: F401
