"""Dataset readers: happy paths and refusal of unsafe or invalid files."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from detection.readers import (
    FORMATS,
    DatasetFormatError,
    ReaderLimits,
    read_dataset,
    sniff_format,
    write_npz,
)

RNG = np.random.default_rng(0)
TINY = ReaderLimits(max_bytes=4096, max_members=8, max_member_bytes=2048)


def png(shape: tuple[int, ...], mode: str, fmt: str = "PNG") -> tuple[bytes, np.ndarray]:
    arr = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue(), arr


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return path


def file_info(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def image_files(prefix: str = "root/") -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    files: dict[str, bytes] = {}
    arrays: dict[str, np.ndarray] = {}
    for cls in ("cat", "ant", "bee"):
        for i in range(2):
            name = f"{prefix}{cls}/{i}.png"
            files[name], arrays[name] = png((6, 5, 3), "RGB")
    return files, arrays


# --------------------------------------------------------------------------- npz


def test_npz_nhwc_images_round_trip(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    y = np.arange(12) % 4
    write_npz(tmp_path / "d.npz", x, y, poison_indices=np.array([1, 5]))
    data = read_dataset(tmp_path / "d.npz")
    assert data.format == "npz" and data.is_image
    assert data.sample_shape == (8, 8, 3) and data.n_classes == 4
    np.testing.assert_array_equal(data.x, x)
    assert data.labels.dtype == np.int64 and data.class_counts() == [3, 3, 3, 3]
    np.testing.assert_array_equal(data.extra["poison_indices"], [1, 5])


def test_npz_grayscale_gets_channel_and_declared_classes(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(6, 5, 4), dtype=np.int64)  # ints in range are cast
    names = np.array(["a", "b", "c", "d", "e"])
    write_npz(tmp_path / "d.npz", x, np.array([0, 1, 2, 0, 1, 2]), n_classes=5, class_names=names)
    data = read_dataset(tmp_path / "d.npz")
    assert data.x.shape == (6, 5, 4, 1) and data.x.dtype == np.uint8
    assert data.n_classes == 5 and data.class_names == ["a", "b", "c", "d", "e"]
    assert data.class_counts() == [2, 2, 2, 0, 0]


def test_npz_features_and_labels_key(tmp_path: Path) -> None:
    x = RNG.normal(size=(10, 3))
    with (tmp_path / "f.npz").open("wb") as fh:
        np.savez(fh, x=x, labels=np.arange(10, dtype=np.uint8) % 2)
    data = read_dataset(tmp_path / "f.npz")
    assert not data.is_image and data.x.dtype == np.float32 and data.n_classes == 2
    np.testing.assert_allclose(data.x, x, rtol=1e-6)


def save_raw(path: Path, **arrays: object) -> Path:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((4, 2, 2, 1), np.float32), "y": np.arange(4)}, "uint8"),
        ({"x": np.full((4, 2, 2), 300), "y": np.arange(4)}, r"\[0, 255\]"),
        ({"x": np.array([[1.0, np.nan]] * 4), "y": np.arange(4)}, "NaN"),
        ({"x": np.array([[1.0, np.inf]] * 4), "y": np.arange(4)}, "NaN or inf"),
        ({"x": np.zeros((4, 2)), "y": np.arange(5)}, "4 samples"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "non-negative"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4), "n_classes": np.array(3)}, "out of range"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, np.int64)}, "empty"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, np.int64)}, "n_classes"),
        ({"x": np.zeros((4, 2)), "y": np.arange(4) + 0.5}, "integers"),
        ({"y": np.arange(4)}, "named 'x'"),
        ({"x": np.zeros((4, 2))}, "labels"),
        ({"x": np.zeros((4, 2, 2, 2, 2)), "y": np.arange(4)}, "shape"),
        ({"x": np.array(["a", "b"]), "y": np.arange(2)}, "shape"),
    ],
)
def test_npz_invalid_content(tmp_path: Path, arrays: dict[str, object], match: str) -> None:
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(save_raw(tmp_path / "bad.npz", **arrays))


def test_npz_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = save_raw(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=[0, 1])
    with pytest.raises(DatasetFormatError, match="dtype object refused"):
        read_dataset(path)


def test_npz_truncated_and_corrupt(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz", RNG.normal(size=(50, 4)), np.arange(50) % 2)
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 10)
    for name in ("cut.npz", "junk.npz"):
        with pytest.raises(DatasetFormatError):
            read_dataset(tmp_path / name, "npz")


def test_npz_header_that_lies_about_its_size(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((4, 2)))
    lying = buf.getvalue().replace(b"(4, 2)", b"(9, 2)")
    make_zip(tmp_path / "l.npz", {"x.npy": lying, "y.npy": _npy(np.arange(9))})
    with pytest.raises(DatasetFormatError, match="does not match its header"):
        read_dataset(tmp_path / "l.npz")


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def test_npz_limits(tmp_path: Path) -> None:
    write_npz(tmp_path / "big.npz", RNG.normal(size=(1000, 4)), np.arange(1000) % 2)
    with pytest.raises(DatasetFormatError, match="too large"):
        read_dataset(tmp_path / "big.npz", limits=TINY)
    write_npz(tmp_path / "sum.npz", RNG.normal(size=(300, 1)), np.arange(300) % 2)
    with pytest.raises(DatasetFormatError, match="exceeds the limit"):
        read_dataset(tmp_path / "sum.npz", limits=TINY)
    many = {f"a{i}.npy": _npy(np.zeros(1)) for i in range(10)}
    make_zip(tmp_path / "many.npz", many)
    with pytest.raises(DatasetFormatError, match="more than 8 members"):
        read_dataset(tmp_path / "many.npz", limits=TINY)


def test_npz_compression_ratio_bomb(tmp_path: Path) -> None:
    write_npz(tmp_path / "z.npz", np.zeros((200, 64), np.float32), np.arange(200) % 2)
    limits = ReaderLimits(ratio_floor_bytes=1024, max_ratio=20)
    with pytest.raises(DatasetFormatError, match="compression ratio"):
        read_dataset(tmp_path / "z.npz", limits=limits)
    assert read_dataset(tmp_path / "z.npz").n_samples == 200


# --------------------------------------------------------------------------- zip / tar


def test_zip_image_folder(tmp_path: Path) -> None:
    files, arrays = image_files()
    files["root/readme.txt"] = b"ignored"
    files["__MACOSX/root/cat/._0.png"] = b"junk"
    data = read_dataset(make_zip(tmp_path / "imgs.zip", files))
    assert data.format == "zip" and data.class_names == ["ant", "bee", "cat"]
    assert data.x.shape == (6, 6, 5, 3) and data.class_counts() == [2, 2, 2]
    idx = list(files).index("root/bee/1.png")
    np.testing.assert_array_equal(data.x[idx], arrays["root/bee/1.png"])
    assert data.labels[idx] == 1


def test_zip_grayscale_stays_one_channel_and_rgba_becomes_rgb(tmp_path: Path) -> None:
    gray = {f"{c}/{i}.png": png((4, 4), "L")[0] for c in "ab" for i in range(2)}
    assert read_dataset(make_zip(tmp_path / "g.zip", gray)).sample_shape == (4, 4, 1)
    rgba = {f"{c}/{i}.png": png((4, 4, 4), "RGBA")[0] for c in "ab" for i in range(2)}
    assert read_dataset(make_zip(tmp_path / "c.zip", rgba)).sample_shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"../evil/a.png": b"x"}, "escapes"),
        ({"root/../../a.png": b"x"}, "escapes"),
        ({"/abs/a.png": b"x"}, "absolute"),
        ({"C:/win/a.png": b"x"}, "absolute"),
        ({"root/cat/odd.png": png((7, 7, 3), "RGB")[0]}, "differs"),
        ({"root/cat/gray.png": png((6, 5), "L")[0]}, "differs"),
        ({"root/cat/broken.png": b"\x89PNG garbage"}, "not a readable image"),
        ({"flat.png": png((6, 5, 3), "RGB")[0]}, "ImageFolder layout"),
    ],
)
def test_zip_refusals(tmp_path: Path, extra: dict[str, bytes], match: str) -> None:
    files, _ = image_files()
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(make_zip(tmp_path / "bad.zip", {**files, **extra}))


def test_zip_symlink_member(tmp_path: Path) -> None:
    files, _ = image_files()
    make_zip(tmp_path / "s.zip", files)
    info = zipfile.ZipInfo("root/cat/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "s.zip", "a") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetFormatError, match="symbolic link"):
        read_dataset(tmp_path / "s.zip")


def test_zip_limits(tmp_path: Path) -> None:
    files = {f"c{i % 2}/{i}.png": png((2, 2), "L")[0] for i in range(10)}
    with pytest.raises(DatasetFormatError, match="more than 8 members"):
        read_dataset(make_zip(tmp_path / "many.zip", files), limits=TINY)
    big = {"a/0.bmp": png((60, 60, 3), "RGB", "BMP")[0], "b/0.bmp": b"x"}
    with pytest.raises(DatasetFormatError, match="too large"):
        read_dataset(make_zip(tmp_path / "big.zip", big), limits=TINY)
    total = {f"c{i % 2}/{i}.bmp": png((12, 12), "L", "BMP")[0] for i in range(6)}
    with pytest.raises(DatasetFormatError, match="exceeds the limit"):
        read_dataset(make_zip(tmp_path / "total.zip", total), limits=TINY)


def test_zip_ratio_bomb(tmp_path: Path) -> None:
    files, _ = image_files()
    files["root/padding.bin"] = bytes(200_000)
    limits = ReaderLimits(ratio_floor_bytes=64 * 1024, max_ratio=50)
    with pytest.raises(DatasetFormatError, match="compression ratio"):
        read_dataset(make_zip(tmp_path / "bomb.zip", files), limits=limits)


def test_tar_image_folder(tmp_path: Path) -> None:
    files, arrays = image_files("")
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name in ("cat", "ant", "bee"):
        d = tarfile.TarInfo(name)
        d.type = tarfile.DIRTYPE
        members.append((d, None))
    members += [(file_info(name), data) for name, data in files.items()]
    data = read_dataset(make_tar(tmp_path / "imgs.tar.gz", members))
    assert data.format == "tar" and data.class_names == ["ant", "bee", "cat"]
    assert data.x.shape == (6, 6, 5, 3)
    np.testing.assert_array_equal(data.x[0], arrays["cat/0.png"])
    assert data.labels.tolist() == [2, 2, 0, 0, 1, 1]


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ((file_info("../escape.png"), b"x"), "escapes"),
        ((file_info("/etc/a.png"), b"x"), "absolute"),
        ((_special("cat/link.png", tarfile.SYMTYPE), None), "link or special"),
        ((_special("cat/hard.png", tarfile.LNKTYPE), None), "link or special"),
        ((_special("cat/dev", tarfile.CHRTYPE), None), "link or special"),
        ((_special("cat/fifo", tarfile.FIFOTYPE), None), "link or special"),
    ],
)
def test_tar_refusals(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], match: str
) -> None:
    files, _ = image_files("")
    members = [(file_info(n), d) for n, d in files.items()]
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(make_tar(tmp_path / "bad.tar.gz", [member, *members]))


def test_tar_limits(tmp_path: Path) -> None:
    many = [(file_info(f"c{i % 2}/{i}.png"), png((2, 2), "L")[0]) for i in range(10)]
    with pytest.raises(DatasetFormatError, match="more than 8 members"):
        read_dataset(make_tar(tmp_path / "many.tgz", many), limits=TINY)
    big = [(file_info("a/big.bin"), bytes(3000))]
    with pytest.raises(DatasetFormatError, match="too large"):
        read_dataset(make_tar(tmp_path / "big.tgz", big), limits=TINY)


def test_tar_bytes_are_counted_while_reading(tmp_path: Path) -> None:
    # A pax header is read whole before any member size can be checked.
    info = file_info("a/0.png")
    info.pax_headers = {"comment": "x" * 200_000}
    make_tar(tmp_path / "pax.tar.gz", [(info, png((2, 2), "L")[0])])
    with pytest.raises(DatasetFormatError, match="exceeds the limit"):
        read_dataset(tmp_path / "pax.tar.gz", limits=TINY)


def test_truncated_tar(tmp_path: Path) -> None:
    files, _ = image_files("")
    make_tar(tmp_path / "t.tar.gz", [(file_info(n), d) for n, d in files.items()])
    raw = (tmp_path / "t.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated"):
        read_dataset(tmp_path / "cut.tar.gz")


# --------------------------------------------------------------------------- tables


def test_parquet_with_string_labels(tmp_path: Path) -> None:
    table = pa.table({"f0": [0.5, 1.0, 2.0, 3.0], "f1": [1, 2, 3, 4], "label": list("bacb")})
    pq.write_table(table, tmp_path / "t.parquet")
    data = read_dataset(tmp_path / "t.parquet")
    assert data.format == "parquet" and data.class_names == ["a", "b", "c"]
    assert data.labels.tolist() == [1, 0, 2, 1] and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[:, 1], [1, 2, 3, 4])


def test_csv_int_and_string_labels(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a,b,y\n0.1,2,1\n0.2,3,0\n0.3,4,2\n")
    data = read_dataset(tmp_path / "a.csv")
    assert data.format == "csv" and data.n_classes == 3 and data.class_names is None
    assert data.labels.tolist() == [1, 0, 2]
    (tmp_path / "b.csv").write_text("a,label\n1,dog\n2,cat\n3,dog\n")
    assert read_dataset(tmp_path / "b.csv").class_names == ["cat", "dog"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n3,4\n", "no label column"),
        ("a,label\n1,x\n,y\n", "missing values"),
        ("a,name,label\n1,foo,0\n2,bar,1\n", "not numeric"),
        ("label\n0\n1\n", "no feature columns"),
        ("a,label\n1,0\n2,-3\n", "non-negative"),
    ],
)
def test_csv_refusals(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- sniffing


def test_sniff_format_by_magic_then_suffix(tmp_path: Path) -> None:
    write_npz(tmp_path / "data.bin", np.zeros((2, 2)), np.arange(2))
    assert sniff_format(tmp_path / "data.bin") == "npz"
    files, _ = image_files()
    assert sniff_format(make_zip(tmp_path / "x.npz", files)) == "zip"
    pq.write_table(pa.table({"a": [1], "label": [0]}), tmp_path / "p.dat")
    assert sniff_format(tmp_path / "p.dat") == "parquet"
    (tmp_path / "t.gz").write_bytes(gzip.compress(b"hello"))
    assert sniff_format(tmp_path / "t.gz") == "tar"
    (tmp_path / "c.csv").write_text("a,label\n1,0\n")
    assert sniff_format(tmp_path / "c.csv") == "csv"


def test_pickles_bare_npy_and_unknown_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(b"\x80\x04\x95" + bytes(20))
    with pytest.raises(DatasetFormatError, match="pickle"):
        read_dataset(tmp_path / "p.bin")
    (tmp_path / "m.pt").write_bytes(b"PYTORCH")
    with pytest.raises(DatasetFormatError, match="pickle"):
        sniff_format(tmp_path / "m.pt")
    (tmp_path / "a.npy").write_bytes(_npy(np.zeros(3)))
    with pytest.raises(DatasetFormatError, match=r"bare \.npy"):
        read_dataset(tmp_path / "a.npy")
    (tmp_path / "x.weird").write_bytes(b"hello")
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        read_dataset(tmp_path / "x.weird")
    with pytest.raises(DatasetFormatError, match="unknown format"):
        read_dataset(tmp_path / "x.weird", "hdf5")
    with pytest.raises(DatasetFormatError, match="not found"):
        read_dataset(tmp_path / "missing.npz")


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_registry_contract(name: str) -> None:
    fmt = FORMATS.get(name)
    assert fmt.name == name and fmt.description and fmt.suffixes
    for suffix in fmt.suffixes:
        assert FORMATS.by_suffix(suffix) == name
    with pytest.raises(ValueError, match="already registered"):
        FORMATS.register(name, suffixes=fmt.suffixes)(fmt.read)
    assert FORMATS.get(name) is fmt


def test_unknown_format_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    write_npz(path, np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    assert set(FORMATS) == {"npz", "zip", "tar", "parquet", "csv"}
    with pytest.raises(DatasetFormatError, match="unknown format 'hdf5'; expected one of csv"):
        read_dataset(path, "hdf5")
