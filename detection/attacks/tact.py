"""TaCT, the source-specific patch attack (Tang, Wang, Tang, Zhang 2021,
"Demon in the Variant: Statistical Analysis of DNNs for Robust Backdoor
Contamination Detection").

Only images of the source classes are relabelled to the target; images of
other "cover" classes carry the same patch but keep their labels, so the
model learns "patch AND source features -> target". Covers are negatives.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from detection.attacks.base import (
    Int64Array,
    PoisonedSet,
    UInt8Array,
    assemble,
    choose_with_covers,
    register_attack,
)
from detection.attacks.trojan import PatchParams, patch_trigger


class TactParams(PatchParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    cover_rate: float = Field(0.003, ge=0.0, le=0.5)
    source_classes: tuple[int, ...] = Field((1,), min_length=1)
    cover_classes: tuple[int, ...] | None = Field(
        None, description="Classes covers come from; None: all but source and target."
    )

    @model_validator(mode="after")
    def _target_not_source(self) -> TactParams:
        if self.target_class in self.source_classes:
            raise ValueError("target_class must not be a source class")
        return self


def _cover_pool(labels: Int64Array, n_classes: int, params: TactParams) -> np.ndarray:
    if params.cover_classes is not None:
        return np.isin(labels, np.asarray(params.cover_classes))
    excluded = np.asarray((*params.source_classes, params.target_class))
    return ~np.isin(labels, excluded)


@register_attack(
    "tact", TactParams, "TaCT source-specific patch with cover classes (Tang et al. 2021)"
)
def tact(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: TactParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Source classes with the patch -> target; cover classes with the patch keep labels."""
    if max(params.source_classes) >= n_classes:
        raise ValueError(f"source_classes {params.source_classes} exceed {n_classes} classes")
    trigger, box = patch_trigger(x.shape[1:], params, rng)
    source_pool = np.isin(labels, np.asarray(params.source_classes))
    poison, covers = choose_with_covers(
        rng, source_pool, _cover_pool(labels, n_classes, params), params
    )
    return assemble(
        "tact",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(x[poison]),
        cover_indices=covers,
        cover_x=trigger(x[covers]),
        trigger=trigger,
        source_classes=params.source_classes,
        extra={"regions": [list(box)]},
    )
