"""geoseg.io.shards: whole shards encoded by geoseg are the bytes zarr itself writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from geoseg.io.shards import write_shard


def _array(
    root: Path, name: str, shape: tuple[int, ...], dtype: str, separator: str = "/", **kwargs
) -> zarr.Array:
    group = zarr.open_group(str(root), mode="a", zarr_format=3)
    return group.create_array(
        name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), shards=(8, *shape[1:]), fill_value=0,
        config={"write_empty_chunks": True},
        chunk_key_encoding={"name": "default", "separator": separator}, **kwargs,
    )  # fmt: skip


def _shard_bytes(array: zarr.Array, shard: int) -> bytes:
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    return (Path(array.store.root) / array.path / key).read_bytes()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("dtype", "shape", "level"),
    [
        ("uint8", (19, 3, 16, 16), 0),
        ("uint16", (19, 1, 12, 12), 3),
        ("bool", (19, 16, 16), 1),
        ("uint8", (19, 4, 8, 8), None),  # uncompressed (ingest's images)
        ("uint16", (19, 2, 8, 8), None),
        ("float32", (19, 2, 8, 8), 1),
    ],
)
def test_write_shard_is_byte_identical_to_zarr(tmp_path: Path, dtype: str, shape, level: int | None) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 2 if dtype == "bool" else 900, shape).astype(dtype)
    data[2] = 0  # an all-fill chunk is still stored (write_empty_chunks)
    data[4] = data[5] = data[3]  # a run of identical chunks (encoded once)
    data[16:] = data[15]  # the same across a shard boundary
    compressors = None if level is None else zarr.codecs.ZstdCodec(level=level)
    by_zarr = _array(tmp_path / "a.zarr", "x", shape, dtype, compressors=compressors)
    by_geoseg = _array(tmp_path / "b.zarr", "x", shape, dtype, compressors=compressors)
    by_zarr[:] = data
    for shard in range(3):  # 8 + 8 + a short last shard of 3
        write_shard(by_geoseg, shard, data[shard * 8 : (shard + 1) * 8])
        assert _shard_bytes(by_geoseg, shard) == _shard_bytes(by_zarr, shard)
    reopened = zarr.open_array(str(tmp_path / "b.zarr" / "x"), mode="r")
    np.testing.assert_array_equal(reopened[:], data)
    assert not list((tmp_path / "b.zarr").rglob("*.tmp"))  # renamed into place


@pytest.mark.parametrize("separator", ["/", "."])
def test_write_shard_replaces_a_shard_whole(tmp_path: Path, separator: str) -> None:
    array = _array(tmp_path / "s.zarr", "x", (16, 4, 4), "uint8", separator=separator)
    write_shard(array, 1, np.full((8, 4, 4), 9, np.uint8))
    write_shard(array, 1, np.arange(128, dtype=np.uint8).reshape(8, 4, 4))
    np.testing.assert_array_equal(array[8:], np.arange(128, dtype=np.uint8).reshape(8, 4, 4))
    np.testing.assert_array_equal(array[:8], 0)


def test_other_layouts_fall_back_to_zarr(tmp_path: Path) -> None:
    """A layout geoseg does not encode itself (blosc here) is still written correctly."""
    array = _array(tmp_path / "o.zarr", "x", (10, 2, 5, 5), "uint16", compressors=BloscCodec())
    data = np.arange(10 * 50, dtype=np.uint16).reshape(10, 2, 5, 5)
    write_shard(array, 0, data[:8])
    write_shard(array, 1, data[8:])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr" / "x"))[:], data)


def test_a_block_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    array = _array(tmp_path / "f.zarr", "x", (10, 4, 4), "uint8")
    with pytest.raises(ValueError, match="does not fit"):
        write_shard(array, 1, np.zeros((8, 4, 4), np.uint8))
