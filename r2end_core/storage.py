"""Read and write artifacts at a local path or any pyarrow filesystem URI (s3://, gs://)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
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


@contextlib.contextmanager
def table_writer(path: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer (``write_table`` as often as wanted) whose file appears at ``path`` when the block ends
    without an error: written to a hidden temporary name, then moved into place, so readers (and a re-run after
    a kill) see the whole file or nothing. Parquet readers skip names starting with '.'."""
    fs, inner = filesystem(path)
    folder, name = inner.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    staging = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open_output_stream(staging) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            yield writer
    except BaseException:
        with contextlib.suppress(OSError):  # never opened, or an upload never completed: nothing to delete
            fs.delete_file(staging)
        raise
    fs.move(staging, inner)


def write_table_atomic(table: pa.Table, path: str) -> None:
    """``table`` at ``path``, whole or not at all (``table_writer``)."""
    with table_writer(path, table.schema) as writer:
        writer.write_table(table)


def iter_tables(path: str, columns: list[str] | None = None, rows: int = 1 << 16) -> Iterator[pa.Table]:
    """A Parquet file, or a folder of them (``parquet_files``), as consecutive tables of at most ``rows`` rows
    (only ``columns``), read as they are consumed, one file at a time: a reader holds about one."""
    for file in parquet_files(path):
        with open_input(file) as source:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])


def list_files(folder: str, suffix: str = ".parquet") -> list[str]:
    """Visible files under ``folder`` (full paths or URIs), sorted; [] if it does not exist."""
    fs, inner = filesystem(folder)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    names = sorted(
        i.base_name for i in infos if i.is_file and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
    )
    return [join(folder, name) for name in names]


def subfolders(folder: str) -> list[str]:
    """Visible folders directly under ``folder`` (full paths or URIs), sorted; [] if it does not exist."""
    fs, inner = filesystem(folder)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))
    return [join(folder, name) for name in names]


def parquet_files(path: str) -> list[str]:
    """``path`` if it is a file, else the visible Parquet files of the folder it names, sorted; a folder holding
    anything else visible (a subfolder, another file) is an error naming it, not data left out."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return [path]
    entries = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    if others := sorted(
        e.base_name
        for e in entries
        if not e.base_name.startswith((".", "_")) and not (e.is_file and e.base_name.endswith(".parquet"))
    ):
        raise ValueError(
            f"{path}: holds {others}, which are not Parquet files (a folder of data holds *.parquet files only)"
        )
    return list_files(path)


def delete_file(path: str) -> None:
    fs, inner = filesystem(path)
    fs.delete_file(inner)


def open_output(path: str):
    """A writable binary stream at ``path``, creating parent folders."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    return fs.open_output_stream(inner)


def open_input(path: str):
    fs, inner = filesystem(path)
    return fs.open_input_file(inner)


def sha256(path: str) -> str:
    """The sha256 (hex) of one file, local or at a URI, read in blocks (weights run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open_input(path) as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: str) -> dict[str, str]:
    """The sha256 of every file under ``folder`` (local or a URI), by its path relative to ``folder``, sorted."""
    fs, inner = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    names = sorted(os.path.relpath(i.path, inner) for i in infos if i.is_file)
    return {name: sha256(join(folder, name)) for name in names}


class DamagedVersionError(RuntimeError):
    """A saved version (a model's, an index's) whose files are not those its manifest names."""


def damaged_file(folder: str, files: dict[str, str], read: dict[str, bytes] | None = None) -> tuple[str, str] | None:
    """(name, its sha256 or "missing") of the first file under ``folder`` whose sha256 is not ``files[name]``;
    None when every one matches; ("manifest.json", "none") when ``files`` is empty (nothing to check it by: a
    manifest written before versions recorded their files). ``read``: the contents of files already read (hashed
    as they are, so what is checked is what the caller uses)."""
    if not files:
        return "manifest.json", "none"
    for name, expected in files.items():
        path = join(folder, name)
        if read and name in read:
            found = hashlib.sha256(read[name]).hexdigest()
        else:
            found = sha256(path) if exists(path) else "missing"
        if found != expected:
            return name, found
    return None


def check_files(
    folder: str, files: dict[str, str], what: str, remedy: str, read: dict[str, bytes] | None = None
) -> None:
    """Every file ``name`` under ``folder`` has the sha256 ``files[name]`` (``read``: as ``damaged_file``), or
    ``DamagedVersionError`` naming ``what`` (e.g. "model sasrec version abc"), the file and ``remedy``. A manifest
    that records no files (written before versions recorded them) cannot be checked: refused the same way."""
    if damaged := damaged_file(folder, files, read):
        name, found = damaged
        problem = (
            f"{name} has sha256 {found[:16]}, its manifest says {files[name][:16]}"
            if files
            else "its manifest records no files' sha256 to check them by"
        )
        raise DamagedVersionError(f"{what}: {problem}: the version is damaged; {remedy}")


def digest(value: Any, length: int = 10) -> str:
    """A short, stable name for a JSON-able value (settings, inputs): the same value gives the same digest.

    >>> digest({"b": 1, "a": [2, 3]}) == digest({"a": [2, 3], "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def write_json(obj: Any, path: str) -> None:
    """Written to a hidden temporary name, then moved into place: a reader never sees half a file."""
    fs, inner = filesystem(path)
    folder, name = inner.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    staging = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(staging) as out:
        out.write(json.dumps(obj, indent=2, sort_keys=True).encode())
    fs.move(staging, inner)


def create_json(obj: Any, path: str) -> bool:
    """Write ``obj`` at ``path`` only if nothing is there; whether this call wrote it. On a local filesystem
    (``file://`` too) the complete file is hard-linked into place, which fails if the name exists: of writers
    racing, exactly one wins (a filesystem without hard links, e.g. some FUSE mounts, raises). pyarrow's object
    stores have no exclusive create: there the file is written unless it exists and read back, so of writers in
    the same instant each but the last sees another's and loses, the last wins, and two that each read back
    their own before the other wrote both win."""
    fs, inner = filesystem(path)
    if not isinstance(fs, pafs.LocalFileSystem):
        if exists(path):
            return False
        write_json(obj, path)
        return read_json(path) == obj
    folder, name = os.path.split(inner)
    os.makedirs(folder, exist_ok=True)
    staging = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(staging, "w") as out:
            json.dump(obj, out, indent=2, sort_keys=True)
        os.link(staging, inner)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staging)


def read_json(path: str) -> Any:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as src:
        return json.loads(src.read().decode())


def copy_folder(source: str, path: str, replace: bool = True) -> None:
    """Copy the folder ``source`` (e.g. a saved model; local or a URI) to ``path``, replacing what was there
    (``replace=False``: adding to it; files of the same name are overwritten)."""
    src_fs, src_inner = filesystem(source)
    fs, inner = filesystem(path)
    if replace and fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(src_inner, inner, source_filesystem=src_fs, destination_filesystem=fs)


def copy_folder_to_local(path: str, local_target: str) -> None:
    """Copy the folder at ``path`` (local or a URI) to the new local folder ``local_target``."""
    fs, inner = filesystem(path)
    os.makedirs(local_target)
    pafs.copy_files(inner, local_target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def local_folder(path: str, cache_root: str) -> str:
    """A local folder holding the files at ``path``: the path itself when local, else a copy under
    ``cache_root``."""
    if not is_uri(path):
        return absolute(path)
    fs, inner = filesystem(path)
    target = os.path.join(cache_root, uuid.uuid5(uuid.NAMESPACE_URL, path).hex)
    if not os.path.isdir(target):
        pafs.copy_files(inner, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target
