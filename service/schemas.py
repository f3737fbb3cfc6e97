"""Request and response bodies (``XCreate`` in, ``XRead`` out)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ScoreOrder = Literal["score_desc", "index"]


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
    created_at: datetime


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


class JobRead(ReadModel):
    id: str
    dataset_id: str
    clean_dataset_id: str | None
    method: str
    params: dict[str, Any]
    seed: int
    state: str
    stage: str | None
    progress: float
    error: str | None
    metrics: dict[str, Any] | None
    summary: dict[str, Any] | None
    has_ground_truth: bool
    code_version: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class ScoreRead(ReadModel):
    sample_index: int
    score: float
    flagged: bool
    rank: int


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
