"""Detectors. Importing this package registers every detector module."""

from detection.defenses import (  # noqa: F401
    abl,
    ac,
    beatrix,
    ct,
    ensemble,
    frequency,
    scan,
    sentinet,
    spectre,
    ss,
    strip,
)
