"""Whole-shard writes for the patch store: encode a zarr v3 shard in one pass.

Ingest writes every shard whole, by one writer. zarr-python 3.1 encodes a shard's inner
chunks one by one through its async codec pipeline at ~0.3-0.5 ms of Python each, which
with one patch per chunk (the store contract) capped ingest at ~0.15 of a raw rasterio
read. A shard of the ``sharding_indexed`` codec is simple: the encoded inner chunks
back to back, then an index of (offset, length) uint64 pairs with a crc32c checksum
(zarr v3 sharding spec). For the layouts geoseg creates (inner codecs ``bytes``, optionally
then ``zstd``; index ``bytes`` little-endian + ``crc32c`` at the end; inner chunks of one
row of the first axis) :func:`write_shard` builds those bytes directly, byte-identical to what zarr writes
(tests/test_shards.py compares them), and renames them into place atomically. Any other
layout or a non-local store falls back to zarr's own write, so correctness never depends
on the fast path.
"""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

from geoseg.io.fileio import atomic_path

__all__ = ["write_shard"]

EMPTY = 2**64 - 1  # index entry of a chunk that is not stored


def write_shard(array: zarr.Array, shard: int, block: np.ndarray) -> None:
    """Write ``block`` as shard ``shard`` (along axis 0) of ``array``, replacing it whole.

    ``block`` holds the shard's rows (the last shard may be short).
    """
    rows = array.metadata.chunk_grid.chunk_shape[0]  # type: ignore[attr-defined]
    start = shard * rows
    if len(block) > rows or start + len(block) > array.shape[0]:
        raise ValueError(f"block of {len(block)} rows does not fit shard {shard} of {array.shape}")
    if not _encodes_itself(array):
        array.with_config({"write_empty_chunks": True})[start : start + len(block)] = block
        return
    data = np.ascontiguousarray(block, dtype=array.dtype.newbyteorder("<"))  # type: ignore[union-attr]
    zstd = _inner_zstd(array)
    index = np.full((rows, 2), EMPTY, "<u8")  # one inner chunk per row
    parts: list[bytes | memoryview] = []
    if zstd is None:  # uncompressed: the C-order block already is the chunks back to back
        chunk_bytes = data[0].nbytes
        index[: len(data), 0] = np.arange(len(data), dtype="<u8") * chunk_bytes
        index[: len(data), 1] = chunk_bytes
        parts.append(data.data.cast("B"))
    else:
        offset = 0
        encoded = b""
        for i in range(len(data)):
            # Runs of identical chunks (all-valid masks, unlabelled areas) are encoded once.
            if i == 0 or not np.array_equal(data[i], data[i - 1]):
                encoded = zstd.encode(data[i])
            index[i] = (offset, len(encoded))
            offset += len(encoded)
            parts.append(encoded)
    index_bytes = index.tobytes()
    parts += [index_bytes, np.uint32(google_crc32c.value(index_bytes)).tobytes()]
    key = array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))
    with atomic_path(Path(array.store.root) / array.path / key) as tmp, open(tmp, "wb") as out:  # type: ignore[attr-defined]
        out.writelines(parts)


def _encodes_itself(array: zarr.Array) -> bool:
    """True for the layouts write_shard encodes itself; zarr writes anything else."""
    if not isinstance(array.store, LocalStore) or array.metadata.zarr_format != 3:
        return False
    codecs = array.metadata.codecs  # type: ignore[union-attr]
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    sharding = codecs[0]
    inner, index = sharding.codecs, sharding.index_codecs
    shard_shape = array.metadata.chunk_grid.chunk_shape  # type: ignore[attr-defined]
    little = array.dtype.itemsize == 1 or _is_little(inner[0])  # type: ignore[union-attr]
    return (
        len(inner) in (1, 2)
        and isinstance(inner[0], BytesCodec)
        and little
        and (len(inner) == 1 or isinstance(inner[1], ZstdCodec))
        and len(index) == 2
        and isinstance(index[0], BytesCodec)
        and _is_little(index[0])
        and isinstance(index[1], Crc32cCodec)
        and sharding.index_location == ShardingCodecIndexLocation.end
        and tuple(sharding.chunk_shape) == (1, *array.shape[1:])
        and tuple(shard_shape[1:]) == tuple(array.shape[1:])
    )


def _inner_zstd(array: zarr.Array) -> Zstd | None:
    """The zstd encoder of the inner chunks, None where they are stored uncompressed."""
    inner = array.metadata.codecs[0].codecs  # type: ignore[union-attr]
    if len(inner) == 1:
        return None
    return Zstd(level=inner[1].level, checksum=inner[1].checksum)


def _is_little(codec: object) -> bool:
    endian = getattr(codec, "endian", None)
    return endian is not None and endian.value == "little"
