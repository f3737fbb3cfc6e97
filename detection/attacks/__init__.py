"""Backdoor attacks for benchmarks: ``plant(name, x, labels, n_classes, params, seed)``.

Importing the package registers every attack module in :data:`ATTACKS`.
"""

from detection.attacks import (
    adaptive_blend,
    adaptive_k_way,
    adaptive_patch,
    badnet,
    blend,
    clean_label,
    dynamic,
    issba,
    sig,
    tact,
    trojan,
    wanet,
)
from detection.attacks.base import ATTACKS, AttackParams, PoisonedSet, plant

__all__ = [
    "ATTACKS",
    "AttackParams",
    "PoisonedSet",
    "adaptive_blend",
    "adaptive_k_way",
    "adaptive_patch",
    "badnet",
    "blend",
    "clean_label",
    "dynamic",
    "issba",
    "plant",
    "sig",
    "tact",
    "trojan",
    "wanet",
]
