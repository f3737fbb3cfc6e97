"""SIG, the clean-label sinusoidal signal (Barni, Kallas, Tondi 2019, "A New
Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning").

Poisons are chosen among target-class images and keep their labels; each gets
``x + delta sin(2 pi j f / W)`` along the columns ``j``. The paper uses a
stronger signal at test time than at training time.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from detection.attacks.base import (
    AttackParams,
    Int64Array,
    PoisonedSet,
    UInt8Array,
    assemble,
    choose,
    count_for,
    register_attack,
)
from detection.attacks.triggers import add_offset, sine_pattern


class SigParams(AttackParams):
    rate: float = Field(0.02, gt=0.0, le=0.5)
    delta: float = Field(20.0, gt=0.0, le=255.0, description="Train amplitude (0..255 scale).")
    test_delta: float | None = Field(
        None, gt=0.0, le=255.0, description="Test amplitude; None: same as delta."
    )
    frequency: float = Field(6.0, gt=0.0, description="Periods across the image width.")


@register_attack("sig", SigParams, "SIG clean-label sinusoid (Barni et al. 2019)")
def sig(
    x: UInt8Array,
    labels: Int64Array,
    n_classes: int,
    params: SigParams,
    rng: np.random.Generator,
) -> PoisonedSet:
    """Add a horizontal sinusoid to target-class images; labels unchanged."""
    _, h, w, c = x.shape
    train_wave = sine_pattern(h, w, c, params.delta, params.frequency)
    test_wave = sine_pattern(h, w, c, params.test_delta or params.delta, params.frequency)
    pool = labels == params.target_class
    poison = choose(rng, pool, count_for(params.rate, labels.size))

    def trigger(batch: UInt8Array) -> UInt8Array:
        return add_offset(batch, test_wave)

    return assemble(
        "sig",
        x,
        labels,
        n_classes,
        params,
        poison_indices=poison,
        poison_x=add_offset(x[poison], train_wave),
        trigger=trigger,
        extra={"clean_label": True},
    )
