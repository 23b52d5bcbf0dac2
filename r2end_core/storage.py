"""Read and write artifacts at a local path or any pyarrow filesystem URI (s3://, gs://)."""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """Local paths become absolute (Ray workers run in other folders); URIs stay as they are."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the in-filesystem path for a local path or URI."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), absolute(path)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file, or a folder of Parquet files as written by Ray Data."""
    fs, inner = filesystem(path)
    return pq.read_table(inner, filesystem=fs, columns=columns)


def write_table(table: pa.Table, path: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, inner, filesystem=fs, compression="zstd")


def open_output(path: str):
    """A writable binary stream at ``path``, creating parent folders."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    return fs.open_output_stream(inner)


def write_json(obj: Any, path: str) -> None:
    with open_output(path) as out:
        out.write(json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: str) -> Any:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as src:
        return json.loads(src.read().decode())
