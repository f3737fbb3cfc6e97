"""BadNet: a small checkerboard patch in a corner (Gu, Dolan-Gavitt, Garg 2017,
"BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain").

``badnet`` relabels every poison to the target class; ``badnet_all2all`` maps
class ``y`` to ``(y + 1) mod C``. The 3x3 patch stays 3x3 on images of at
least 16 pixels and shrinks to 2x2 below.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    TriggerFn,
    UInt8Array,
    assemble,
    choose,
    count_for,
    not_target,
    register_attack,
)
from detection.attacks.triggers import Box, Corner, checker, corner_box, paste


class BadNetParams(AttackParams):
    rate: float = Field(0.003, gt=0.0, le=0.5)
    patch_size: int | None = Field(
        None, ge=1, description="Side of the checker patch; None: 3 (2 below 16 pixels)."
    )
    corner: Corner = "bottom_right"
    margin: int = Field(0, ge=0, description="Pixels between the patch and the image border.")


def checker_trigger(shape: tuple[int, ...], params: BadNetParams) -> tuple[TriggerFn, Box]:
    """The patch-stamping function for images of ``shape`` (H, W, C) and its box."""
    h, w, c = shape
    size = params.patch_size or (3 if min(h, w) >= 16 else 2)
    box = corner_box(h, w, size, params.corner, params.margin)
    pattern = checker(size, c)

    def trigger(batch: UInt8Array) -> UInt8Array:
        return paste(batch, pattern, box[0], box[1])

    return trigger, box


def _badnet(
    name: str,
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: BadNetParams,
    rng: np.random.Generator,
    all2all: bool,
) -> PoisonedSet:
    trigger, box = checker_trigger(x.shape[1:], params)
    pool = np.ones_like(labels, dtype=bool) if all2all else not_target(labels, params)
    poison = choose(rng, pool, count_for(params.rate, labels.size))
    return assemble(
        name,
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=trigger(x[poison]),
        trigger=trigger,
        poison_labels=(labels[poison] + 1) % n_classes if all2all else None,
        target_class=None if all2all else params.target_class,
        extra={"regions": [list(box)]},
    )


@register_attack("badnet", BadNetParams, "BadNet 3x3 corner checker, all-to-one (Gu et al. 2017)")
def badnet(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: BadNetParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """All-to-one BadNet: poisons drawn from non-target classes, relabelled to the target."""
    return _badnet("badnet", x, labels, n_classes, params, rng, all2all=False)


@register_attack(
    "badnet_all2all", BadNetParams, "BadNet corner checker, all-to-all y -> y+1 (Gu et al. 2017)"
)
def badnet_all2all(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: BadNetParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """All-to-all BadNet: poisons from every class, relabelled ``(y + 1) mod C``."""
    return _badnet("badnet_all2all", x, labels, n_classes, params, rng, all2all=True)
