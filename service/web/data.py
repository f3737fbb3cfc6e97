"""Stored datasets for the pages: read once through ``detection.readers``, decoded per sample.

A :class:`DatasetCache` lives on ``app.state`` (or is made by the report
command); it keeps the last few loaded datasets so a grid of thumbnails does
not re-read the file for every image.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from detection.readers import LoadedDataset, read_dataset
from service import datasets
from service.auth import OPEN, Principal
from service.errors import InvalidInput, NotFound
from service.models import Dataset
from service.storage import LocalStorage

PIL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class DatasetCache:
    """The ``size`` most recently used datasets, by id; safe across request threads."""

    def __init__(self, storage: LocalStorage, size: int = 2) -> None:
        self.storage = storage
        self.size = size
        self._items: OrderedDict[str, LoadedDataset] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, row: Dataset) -> LoadedDataset:
        with self._lock:
            if row.id in self._items:
                self._items.move_to_end(row.id)
                return self._items[row.id]
            loaded = read_dataset(self.storage.path_for(row.storage_uri), row.format)
            self._items[row.id] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return loaded


def is_image(row: Dataset) -> bool:
    """Images are stored ``(H, W, C)`` per sample; feature vectors ``(D,)``."""
    return len(row.sample_shape) == 3


def class_name(loaded: LoadedDataset, label: int) -> str:
    names = loaded.class_names
    return names[label] if names is not None and label < len(names) else str(label)


def sample_png(
    session: Session,
    cache: DatasetCache,
    dataset_id: str,
    index: int,
    principal: Principal = OPEN,
) -> bytes:
    """Sample ``index`` of the dataset as PNG bytes.

    Raises :class:`NotFound` for a missing dataset or an index outside ``[0, N)``,
    :class:`InvalidInput` for a dataset of feature vectors.
    """
    row = datasets.get(session, dataset_id, principal)
    if not is_image(row):
        raise InvalidInput(f"dataset {dataset_id} holds feature vectors, not images")
    if not 0 <= index < row.n_samples:
        raise NotFound(f"sample {index} not found: dataset {dataset_id} has {row.n_samples}")
    return encode_png(require_loaded(cache, row).x[index])


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 ``(H, W, C)`` image as PNG."""
    channels = int(image.shape[-1])
    pixels = image[..., 0] if channels == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode=PIL_MODES[channels]).save(buf, "PNG")
    return buf.getvalue()


def require_loaded(cache: DatasetCache, row: Dataset) -> LoadedDataset:
    """The dataset's arrays; :class:`NotFound` when its file is gone from storage."""
    if not cache.storage.exists(row.storage_uri):
        raise NotFound(f"the file of dataset {row.id} is missing from storage")
    return cache.load(row)
