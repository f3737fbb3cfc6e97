"""Confusion Training params: one frozen model, filled from a preset.

Presets: the paper's ``cifar10`` and ``gtsrb`` schedules (Qi et al., USENIX
Security 2023, Table/Appendix settings), a GPU ``cifar10-fast``, ``tabular``
(MLP) and a CPU-sized ``fast``. Every value is a field, so a caller can
override any of them; ``model_dump()`` holds the resolved values.

The paper's presets run fixed epoch and iteration counts, the paper's flag rule
and a dense score from the last model. The short presets cannot rely on sheer
length, so they switch on the robust variants (see ``docs/ct.md``):
fit-driven pretraining, confusion until the reserve is scrambled, a
data-sized reserve, guarded distillation, a score built across rounds and flags
calibrated on known-clean "canary" samples.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from detection.base_model import BaseModelParams
from detection.registry import DetectorParams

Preset = Literal["cifar10", "cifar10-fast", "gtsrb", "tabular", "fast"]
Arch = Literal["auto", "resnet18", "small_cnn", "convnet", "mlp"]
PosFloat = Annotated[float, Field(gt=0)]
Lambda = Annotated[float, Field(ge=1)]
Ratio = Annotated[float, Field(gt=0, le=1)]
Factor = Annotated[int, Field(ge=1)]

_PAPER: dict[str, Any] = {
    "arch": "resnet18",
    "width": None,
    "feature_dim": None,
    "ratios": [1 / 2, 1 / 5, 1 / 25, 1 / 50, 1 / 100],
    "momentum": 0.7,
    "lambdas": [20.0, 20.0, 20.0, 30.0, 30.0, 15.0],
    "lrs": [1e-3, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2],
    "batch_factors": [2] * 6,
    "batch_size": 32,
    "pretrain_epochs": [100.0, 100.0, 40.0, 40.0, 40.0, 40.0],
    "pretrain_lr": 0.01,
    "pretrain_momentum": 0.9,
    "pretrain_schedule": "constant",
    "pretrain_fit": None,
    "pretrain_min_epochs": [1.0] * 6,
    "pretrain_patience": 0,
    "confusion_iters": [6000, 6000, 6000, 6000, 2000, 2000],
    "confusion_passes": None,
    "confusion_stop": "fixed",
    "confusion_labels": "shift",
    "scramble_margin": 0.25,
    "confusion_max_factor": 2.0,
    "confusion_ema": None,
    "weight_decay": 1e-4,
    "base_source": "separate",
    "base_epochs": 100.0,
    "base_lr": 0.1,
    "base_batch_size": 128,
    "base_augment": True,
    "clean_reserve_size": 2000,
    "clean_reserve_max_fraction": 0.1,
    "reserve_band": [0.4, 0.6],
    "reserve_probe_epochs": 2.0,
    "reserve_redraw_band": None,
    "shifted_reserve_from": 5,
    "topup_fraction": 1 / 50,
    "topup_fraction_last": 1 / 100,
    "distill_floor": None,
    "collapse_guard": False,
    "collapse_log_drop": 4.6,
    "score": "final",
    "class_view": False,
    "flag_rule": "paper",
    "target_fpr": 0.01,
    "score_from_round": 3,
    "calibration_size": None,
    "lr_threshold": 2.0,
    "max_class_threshold": 1.5,
    "cov_eps": 1e-3,
}

# What the short schedules switch on: they are too short to be robust by length.
_ROBUST: dict[str, Any] = {
    "pretrain_fit": 0.999,
    "pretrain_patience": 5,
    "confusion_stop": "scrambled",
    "confusion_labels": "random",
    "base_source": "labels",
    "clean_reserve_size": None,
    "distill_floor": 1.5,
    "collapse_guard": True,
    "score": "rounds",
    "class_view": True,
    "flag_rule": "clean_fpr",
    "reserve_band": [0.1, 0.45],
    "reserve_redraw_band": [0.5, 0.95],
}

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(_PAPER),
    "gtsrb": {
        **_PAPER,
        "lambdas": [20.0] * 6,
        "lrs": [1e-3] * 6,
        "batch_factors": [2, 2, 4, 8, 8, 2],
    },
    # Batch 128 (4x the paper) with the learning rates scaled 4x. Pretraining
    # runs until the set is fitted (epoch caps at a fifth of the paper's on the
    # two large early sets); confusion until the reserve is scrambled, capped
    # at the paper's reserve passes.
    "cifar10-fast": {
        **_PAPER,
        **_ROBUST,
        "batch_size": 128,
        "lrs": [4e-3, 4e-3, 6e-3, 1.2e-2, 2.4e-2, 4e-2],
        "lambdas": [20.0, 20.0, 20.0, 25.0, 30.0, 15.0],
        "pretrain_lr": 0.04,
        "pretrain_epochs": [20.0, 20.0, 20.0, 40.0, 40.0, 40.0],
        "pretrain_min_epochs": [2.0, 10.0, 20.0, 40.0, 40.0, 20.0],
        "confusion_passes": [48.0, 48.0, 48.0, 48.0, 16.0, 16.0],
        "base_epochs": 20.0,
        "base_batch_size": 256,
        "base_lr": 0.2,
    },
    "tabular": {
        **_PAPER,
        "arch": "mlp",
        "lambdas": [20.0] * 6,
        "lrs": [1e-3] * 6,
        "pretrain_epochs": [30.0, 30.0, 10.0, 10.0, 10.0, 10.0],
        "confusion_iters": [2000, 2000, 2000, 2000, 1000, 1000],
        "base_epochs": 20.0,
        "base_lr": 0.05,
        "base_augment": False,
        "clean_reserve_size": 5000,
    },
    # CPU-sized: the grid CNN (MLP for features), batch 64 with the learning
    # rates doubled. Pretraining to a 99% fit (or a plateau) with epoch caps;
    # confusion until the reserve is scrambled, capped at a quarter of the
    # paper's reserve passes; a ramp instead of the paper's 10x lr jump at round
    # 3 (that jump dropped most surviving poisons in short runs); round 4 no
    # harsher than round 3 (at lr 1e-2, lambda 30 it lost the poisons in every
    # traced blend/WaNet run); rounds 3-5 pretrain with the reserve under
    # shifted labels, as the paper's last round; a 512-unit feature layer, where 128
    # units let confusion erase a trigger with the target's benign features (docs/ct.md).
    "fast": {
        **_PAPER,
        **_ROBUST,
        "arch": "auto",
        "width": 16,
        "feature_dim": 512,
        "batch_size": 64,
        "lrs": [2e-3, 2e-3, 3e-3, 6e-3, 6e-3, 1e-2],
        "lambdas": [20.0, 20.0, 20.0, 25.0, 20.0, 15.0],
        "shifted_reserve_from": 3,
        "pretrain_lr": 0.02,
        "pretrain_epochs": [60.0, 30.0, 40.0, 60.0, 60.0, 40.0],
        "pretrain_min_epochs": [2.0, 10.0, 20.0, 40.0, 40.0, 20.0],
        "confusion_passes": [48.0, 48.0, 48.0, 48.0, 16.0, 16.0],
        "confusion_iters": [1000, 1000, 1000, 1000, 400, 400],
        "base_epochs": 8.0,
        "base_batch_size": 64,
        "base_lr": 0.05,
    },
}
_FAST = PRESETS["fast"]


def _d(name: str) -> Any:
    """Default of a field: the ``fast`` preset's value (copied for lists)."""
    value = _FAST[name]
    return list(value) if isinstance(value, list) else value


def _per_round(name: str, n: int = 6, **kw: Any) -> Any:
    return Field(_d(name), min_length=n, max_length=n, **kw)


class CTParams(DetectorParams):
    """Confusion Training hyperparameters; unset fields come from ``preset``.

    Per-round lists have 6 entries (rounds 0..5); ``ratios`` has 5 (the
    distillation ratio after rounds 0..4). ``model_dump()`` holds the resolved
    values, so a stored job row says exactly what ran.
    """

    preset: Preset = Field("fast", description="Fills every field the caller leaves unset.")
    arch: Arch = Field(_d("arch"), description="auto: convnet for images, mlp for features.")
    width: int | None = Field(_d("width"), ge=4, le=512, description="None = arch default.")
    feature_dim: int | None = Field(
        _d("feature_dim"),
        ge=16,
        le=4096,
        description="convnet only: width of the feature layer (None: 128). With 128 units "
        "a weak trigger shares them with benign features and confusion erases it with them.",
    )
    ratios: list[Ratio] = _per_round("ratios", 5)
    momentum: float = Field(_d("momentum"), ge=0, lt=1, description="Confusion-stage momentum.")
    lambdas: list[Lambda] = _per_round("lambdas")
    lrs: list[PosFloat] = _per_round("lrs", description="Confusion learning rates.")
    batch_factors: list[Factor] = _per_round("batch_factors")
    batch_size: int = Field(_d("batch_size"), ge=2, le=8192)
    pretrain_epochs: list[PosFloat] = _per_round(
        "pretrain_epochs", description="Epochs per round; the cap when pretrain_fit is set."
    )
    pretrain_lr: float = Field(_d("pretrain_lr"), gt=0, le=10)
    pretrain_momentum: float = Field(_d("pretrain_momentum"), ge=0, lt=1)
    pretrain_schedule: Literal["constant", "cosine"] = Field(
        _d("pretrain_schedule"), description="Ignored (constant) when pretrain_fit is set."
    )
    pretrain_fit: float | None = Field(
        _d("pretrain_fit"),
        gt=0,
        le=1,
        description="End a round's pretraining once an epoch's running accuracy on the "
        "given labels reaches this (None: run the fixed epochs, as the paper).",
    )
    pretrain_min_epochs: list[PosFloat] = _per_round(
        "pretrain_min_epochs",
        description="With pretrain_fit: epochs every round runs before the fit test counts. "
        "Late rounds need them: their set is already fitted, yet the paper's long "
        "pretraining on the small distilled set is what amplifies the backdoor.",
    )
    pretrain_patience: int = Field(
        _d("pretrain_patience"),
        ge=0,
        le=100,
        description="With pretrain_fit: also stop after this many epochs without a 0.1% "
        "accuracy gain (a plateau); 0 = never.",
    )
    confusion_iters: list[Factor] = _per_round(
        "confusion_iters", description="Iterations per round (caps when confusion_passes)."
    )
    confusion_passes: list[PosFloat] | None = Field(
        _d("confusion_passes"),
        min_length=6,
        max_length=6,
        description="Size confusion to the reserve: at most this many passes over it per "
        "round (the paper: 96, 96, 96, 96, 32, 32). None: confusion_iters.",
    )
    confusion_stop: Literal["fixed", "scrambled"] = Field(
        _d("confusion_stop"),
        description="scrambled: after the sized count, go on until the reserve's accuracy "
        "under its true labels is at chance (at most confusion_max_factor times the count).",
    )
    confusion_labels: Literal["shift", "random"] = Field(
        _d("confusion_labels"),
        description="shift: base predictions plus one shift per iteration (ALGORITHMS.md); "
        "random: a random wrong label per sample and step (the reference code).",
    )
    scramble_margin: float = Field(_d("scramble_margin"), ge=0, le=5)
    confusion_max_factor: float = Field(
        _d("confusion_max_factor"),
        ge=1,
        le=10,
        description="With confusion_stop 'scrambled': at most this multiple of the sized "
        "count while waiting for the reserve to be scrambled.",
    )
    confusion_ema: float | None = Field(
        _d("confusion_ema"),
        gt=0,
        lt=1,
        description="Decay of an exponential moving average of the confused weights, used "
        "for distillation and identification (None: the last weights).",
    )
    weight_decay: float = Field(_d("weight_decay"), ge=0, le=0.1)
    base_source: Literal["separate", "round0", "labels"] = Field(
        _d("base_source"),
        description="What the confusion labels shift: the predictions of a separately "
        "trained base model (the paper), of round 0's pretrained model, or the reserve's own "
        "labels. A base model's mistakes put the true label among a confusable class's "
        "confusion labels, so that class is never fully confused.",
    )
    base_epochs: float = Field(_d("base_epochs"), gt=0, le=500)
    base_lr: float = Field(_d("base_lr"), gt=0, le=10)
    base_batch_size: int = Field(_d("base_batch_size"), ge=8, le=8192)
    base_augment: bool = Field(_d("base_augment"), description="Crop + flip (images only).")
    clean_reserve_size: int | None = Field(
        _d("clean_reserve_size"),
        ge=10,
        description="Size of a drawn reserve; None: sized to the data (see reserve_size).",
    )
    clean_reserve_max_fraction: float = Field(_d("clean_reserve_max_fraction"), gt=0, le=0.5)
    reserve_band: tuple[
        Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]
    ] = Field(
        tuple(_d("reserve_band")),
        description="Drawn reserve: per class, sample from this band of loss quantiles "
        "(central after a short probe; below the median after round 0's fitted model, "
        "where poisons sit above it).",
    )
    reserve_probe_epochs: float = Field(_d("reserve_probe_epochs"), gt=0, le=50)
    canary_redraw_band: tuple[
        Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]
    ] = Field(
        (0.3, 1.0),
        description="With reserve_redraw_band: the canaries' band of round 0's confused-loss "
        "quantiles. Wide, so they stay close to the clean score law, above the low tail where "
        "poisons sit (up to about a third of their class).",
    )
    reserve_redraw_band: (
        tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] | None
    ) = Field(
        _d("reserve_redraw_band"),
        description="Drawn reserve: after round 0, draw reserve and canaries again from this "
        "band of round 0's confused-loss quantiles (per class). Poisons are what the confused "
        "model still fits, so they sit in the low tail even when they are a third of their "
        "class; the first draw cannot tell where they are when the fitted model fits "
        "everything. None: keep the first draw (the paper).",
    )
    shifted_reserve_from: int = Field(
        _d("shifted_reserve_from"),
        ge=1,
        le=5,
        description="Rounds from this one pretrain on the distilled set plus the reserve "
        "under shifted labels (y+1 mod C), as the paper's last round does: benign features "
        "then point to the wrong class, so only a shortcut such as a trigger fits the "
        "given labels, without relying on a long confusion to scramble a weak backdoor.",
    )
    topup_fraction: float = Field(_d("topup_fraction"), ge=0, le=1)
    topup_fraction_last: float = Field(_d("topup_fraction_last"), ge=0, le=1)
    distill_floor: float | None = Field(
        _d("distill_floor"),
        ge=1,
        le=100,
        description="Keep at least this multiple of the suspected poison count (the isolated "
        "samples of the classes the round's likelihood-ratio check flags). None: the paper.",
    )
    collapse_guard: bool = Field(
        _d("collapse_guard"),
        description="After each round, re-run a confusion whose leading likelihood ratio fell "
        "by more than collapse_log_drop (gentler, lr halved); keep the old set if it falls again.",
    )
    collapse_log_drop: float = Field(_d("collapse_log_drop"), gt=0)
    score: Literal["final", "rounds"] = Field(
        _d("score"),
        description="final: the last confused model's confidence (the paper's model); rounds: "
        "how well every round's confused model still fits each sample.",
    )
    class_view: bool = Field(
        _d("class_view"),
        description="score 'rounds': also judge each sample against its own class (robust "
        "z of its log-loss per class and round); the dense score is the better rank of the "
        "two views, and clean_fpr flags the union of both, each at half the target FPR.",
    )
    flag_rule: Literal["paper", "clean_fpr"] = Field(
        _d("flag_rule"),
        description="paper: the likelihood-ratio rule; clean_fpr: scores above the quantile "
        "of known-clean canary samples at target_fpr, in classes with significant excess.",
    )
    target_fpr: float = Field(
        _d("target_fpr"),
        gt=0,
        lt=0.5,
        description="clean_fpr: the canaries' exceedance rate; only classes with a "
        "significant excess are flagged, so the FPR over the whole set is far lower.",
    )
    score_from_round: int = Field(
        _d("score_from_round"),
        ge=0,
        le=5,
        description="score 'rounds': average the fit percentiles of the confused models "
        "from this round on (the early, mildly confused models also fit clean samples).",
    )
    calibration_size: int | None = Field(
        _d("calibration_size"),
        ge=20,
        description="Canaries taken from the reserve for clean_fpr; None: 30% of it, at most 300.",
    )
    lr_threshold: float = Field(_d("lr_threshold"), gt=0)
    max_class_threshold: float = Field(_d("max_class_threshold"), gt=0)
    cov_eps: float = Field(_d("cov_eps"), gt=0)

    @model_validator(mode="after")
    def _band_ordered(self) -> CTParams:
        if self.reserve_band[0] >= self.reserve_band[1]:
            raise ValueError("reserve_band must be (low, high) with low < high")
        band = self.reserve_redraw_band
        if band is not None and band[0] >= band[1]:
            raise ValueError("reserve_redraw_band must be (low, high) with low < high")
        return self

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset") or "fast"
        table = PRESETS.get(preset) if isinstance(preset, str) else None
        if table is None:
            return data  # the Literal field reports the bad preset name
        return {**table, **data, "preset": preset}

    def base_model_params(self, arch: str) -> BaseModelParams:
        return BaseModelParams(
            arch=arch,
            width=self.width,
            epochs=self.base_epochs,
            batch_size=self.base_batch_size,
            lr=self.base_lr,
            augment=self.base_augment,
        )

    @property
    def n_rounds(self) -> int:
        return len(self.ratios) + 1

    @property
    def uses_canaries(self) -> bool:
        return self.flag_rule == "clean_fpr"
