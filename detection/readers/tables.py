"""``parquet`` and ``csv``: numeric feature columns plus a ``label`` (or ``y``) column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detection.readers.base import (
    DatasetFormatError,
    LoadedDataset,
    ReaderLimits,
    as_features,
    finish,
    int_labels,
    register_format,
    translated,
)


def is_parquet(head: bytes, path: Path) -> bool:
    del path
    return head[:4] == b"PAR1"


@register_format(
    "parquet", suffixes=(".parquet", ".pq"), sniff=is_parquet, description="feature table"
)
def _read_parquet(path: Path, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow.parquet as pq

    with translated("parquet"):
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        if meta.num_rows > limits.max_samples:
            raise DatasetFormatError(f"{meta.num_rows} rows exceed {limits.max_samples}")
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if size > limits.max_bytes:
            raise DatasetFormatError("parquet data exceeds the size limit")
        table = pf.read()
    return _from_table(table, "parquet", limits)


@register_format("csv", suffixes=(".csv",), description="feature table with a header row")
def _read_csv(path: Path, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow.csv as pcsv

    if path.stat().st_size > limits.max_bytes:
        raise DatasetFormatError("csv file exceeds the size limit")
    with translated("csv"):
        table = pcsv.read_csv(path)
    return _from_table(table, "csv", limits)


def _from_table(table: Any, fmt: str, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow as pa

    names = list(table.column_names)
    label_col = next((c for c in ("label", "y") if c in names), None)
    if label_col is None:
        raise DatasetFormatError(f"no label column ('label' or 'y') among columns {names}")
    features = [c for c in names if c != label_col]
    if not features:
        raise DatasetFormatError("no feature columns besides the label column")
    for col in [*features, label_col]:
        if table.column(col).null_count:
            raise DatasetFormatError(f"column {col!r} has missing values")
    for col in features:
        kind = table.column(col).type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise DatasetFormatError(f"feature column {col!r} is not numeric ({kind})")
    x = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in features])
    labels, class_names = _table_labels(table.column(label_col), pa)
    n_classes = None if class_names is None else len(class_names)
    return finish(as_features(x), labels, fmt, limits, n_classes, class_names)


def _table_labels(column: Any, pa: Any) -> tuple[NDArray[np.int64], list[str] | None]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        names, labels = np.unique(np.asarray(column.to_pylist(), dtype=str), return_inverse=True)
        return labels.astype(np.int64), [str(s) for s in names]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return int_labels(column.to_numpy()), None
    raise DatasetFormatError(f"label column has unsupported type {kind}")
