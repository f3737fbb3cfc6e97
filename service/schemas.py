"""Request and response bodies (``XCreate`` in, ``XRead`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.models import JobState

ScoreOrder = Literal["score_desc", "index"]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = dict[MetadataKey, MetadataValue]


class ProblemError(BaseModel):
    """One field at fault (pydantic style)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = Field(description="Where: e.g. ['body', 'params', 'budget'].")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="A URI naming the problem type.")
    title: str = Field(description="The HTTP status phrase.")
    status: int = Field(ge=400, le=599)
    detail: str | None = Field(None, description="What went wrong, for a human.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemError] | None = Field(None, description="The fields at fault, if any.")


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetRead(ReadModel):
    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    n_samples: int
    sample_shape: list[int]
    n_classes: int
    class_counts: list[int]
    class_names: list[str] | None = Field(
        None, description="class_names[c] names label c (ImageFolder folders, string labels)."
    )
    source_uri: str | None = Field(None, description="The reference it was imported from.")
    tenant: str = Field(description="Owner: the tenant of the API key that stored it.")
    created_at: datetime


class DatasetImport(BaseModel):
    """A dataset by reference: s3://bucket/key, https://..., file:// under an allowed root."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(None, max_length=255)


class DatasetPage(BaseModel):
    items: list[DatasetRead]
    total: int
    limit: int
    offset: int


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(max_length=36)
    method: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    clean_dataset_id: str | None = Field(None, max_length=36)
    ground_truth_poison_indices: list[int] | None = Field(
        None, description="Known poison indices; when given, the job reports metrics."
    )
    ground_truth_cover_indices: list[int] | None = Field(
        None, description="Known cover (regularisation) samples, kept apart in metrics."
    )
    metadata: Metadata = Field(
        default_factory=dict,
        max_length=32,
        description="Your tags: at most 32 string pairs (keys up to 64, values up to 512 chars).",
    )


class ClassSummaryRead(BaseModel):
    """Per-class statistics of a finished job (by given label)."""

    label: int
    n_samples: int
    n_flagged: int
    statistic: float | None = None
    suspected: bool = False


class JobSummary(BaseModel):
    """What the detector found; methods add their own fields (e.g. per-round sizes)."""

    model_config = ConfigDict(extra="allow")

    n_samples: int
    n_flagged: int
    target_classes: list[int] = Field(default_factory=list)
    classes: list[ClassSummaryRead] = Field(default_factory=list)


class JobMetrics(BaseModel):
    """Detection metrics against the job's ground truth (null where undefined)."""

    model_config = ConfigDict(extra="allow")

    n_samples: int
    n_poison: int
    n_cover: int = 0
    n_flagged: int
    tpr: float | None = None
    fpr: float | None = None
    auroc: float | None = None
    ap: float | None = None
    tpr_at_fpr_1: float | None = None
    tpr_at_fpr_5: float | None = None
    cover_fpr: float | None = None


class JobRead(ReadModel):
    id: str
    tenant: str = Field(description="Owner: the dataset's tenant; its scores belong to it too.")
    dataset_id: str
    clean_dataset_id: str | None
    method: str
    params: dict[str, Any]
    seed: int
    state: JobState
    stage: str | None = Field(description="What runs now, e.g. 'round 3/6: confusion'.")
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None
    metrics: JobMetrics | None = Field(description="Set when the job had ground truth.")
    summary: JobSummary | None
    has_ground_truth: bool
    code_version: str
    attempts: int
    metadata: Metadata = Field(validation_alias="job_metadata")
    created_at: datetime = Field(description="When it was queued.")
    started_at: datetime | None = Field(description="When it last started running.")
    cancel_requested_at: datetime | None = Field(description="When a cancel was asked for.")
    finished_at: datetime | None = Field(description="When it succeeded, failed or was cancelled.")
    updated_at: datetime
    eta_seconds: float | None = Field(
        description="Seconds left while running, extrapolated from progress (null otherwise)."
    )


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class ScoreRead(ReadModel):
    sample_index: int
    score: float
    flagged: bool
    rank: int = Field(description="1 = most suspicious.")
    source: str = Field(description="Where the sample came from: its archive path, or row index.")


class ScorePage(BaseModel):
    items: list[ScoreRead]
    next_cursor: str | None


class MethodRead(BaseModel):
    name: str
    description: str
    params: dict[str, Any] = Field(description="JSON schema of the method's params.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
