"""Request and response bodies (``XCreate`` in, ``XRead`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.models import JobState

ScoreOrder = Literal["score_desc", "index"]
MethodName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MAX_METHODS = 12
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
    method: str | None = Field(
        None, min_length=1, max_length=64, description="One detector (or give `methods`)."
    )
    methods: list[MethodName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_METHODS,
        description=(
            "Several detectors in one job, sharing one base model; `params` is then keyed by "
            "method name. Scores are stored per method plus `ensemble` (rank fusion) unless "
            "listed; the first method is the default of score pages and exports."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The method's params; with several `methods`, {method: params}.",
    )
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
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that gets a signed POST (Standard Webhooks) when the job "
        "succeeds, fails or is cancelled.",
    )
    webhook_secret: str | None = Field(
        None,
        max_length=128,
        description="Your signing key ('whsec_' + base64 of 24 to 64 bytes); none: one is "
        "generated and returned once, in this response.",
    )

    @model_validator(mode="after")
    def _one_way_to_name_methods(self) -> JobCreate:
        if (self.method is None) == (self.methods is None):
            raise ValueError("give exactly one of `method` or `methods`")
        if self.methods is not None and len(set(self.methods)) != len(self.methods):
            raise ValueError("`methods` must not repeat a method")
        return self

    @property
    def method_list(self) -> list[str]:
        """The named methods, in order (the first is the default)."""
        return list(self.methods) if self.methods is not None else [str(self.method)]


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
    method: str = Field(description="The default method (the first of `methods`).")
    methods: list[str] = Field(
        validation_alias=AliasChoices("method_list", "methods"),
        description="Every detector the job runs, in order.",
    )
    score_methods: list[str] = Field(
        description="What `?method=` of the scores and exports accepts (adds `ensemble`)."
    )
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
    callback_url: str | None = Field(None, description="Where the job's webhook goes.")
    webhook_state: str | None = Field(
        None, description="pending, sending, delivered or failed (null: no callback_url)."
    )


class JobCreated(JobRead):
    """The job as created: the only response that carries its webhook secret."""

    webhook_secret: str | None = Field(
        None, description="Verify the webhook's signature with this ('whsec_...'); shown once."
    )


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class DeliveryRead(ReadModel):
    """One attempt to deliver a job's webhook."""

    id: int
    message_id: str = Field(description="The webhook-id header (the same on every retry).")
    event_type: str = Field(description="e.g. job.succeeded")
    attempt: int = Field(description="1 = the first try of this message.")
    url: str
    status_code: int | None = Field(description="The receiver's status; null: no response.")
    error: str | None = Field(description="Why the attempt failed (network error, status).")
    succeeded: bool
    duration_ms: float
    attempted_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]


class ScoreRead(ReadModel):
    sample_index: int
    score: float
    flagged: bool
    rank: int = Field(description="1 = most suspicious.")
    source: str = Field(description="Where the sample came from: its archive path, or row index.")


class ScorePage(BaseModel):
    """One page; follow ``next`` (or pass ``next_cursor``) until it is null."""

    items: list[ScoreRead]
    next_cursor: str | None
    next: str | None = Field(None, description="The URL of the next page; null on the last.")
    method: str = Field(description="The method whose scores these are.")
    limit: int = Field(description="The page size asked for (at most max_page_size).")


class MethodRead(BaseModel):
    name: str
    description: str
    params: dict[str, Any] = Field(description="JSON schema of the method's params.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
