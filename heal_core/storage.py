"""heal's one storage layer: Parquet, JSON and bytes at a local path or any fsspec URI (``s3://bucket/prefix``).

Every stage reads and writes through these functions so that a crash never leaves a half-written object
that a resumed run would take for finished work, and so that a storage problem surfaces as one
``StorageError`` naming the URI instead of a botocore traceback.

S3 endpoint and credentials come from the standard ``AWS_*`` environment variables or from ``storage_options``
(config ``storage.storage_options``, passed to s3fs: ``endpoint_url``, ``key``, ``secret``, ...), whose values
may be ``${NAME}`` references to environment variables. References are expanded here, when a filesystem is
opened, and nowhere else: the config a run stores and passes around holds the reference, never the secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from heal_core.environment import CREDENTIAL_KEY, ENV_REFERENCE, NotAllowed, check_allowed
from heal_core.schema import conform


class StorageError(ValueError):
    """A storage operation that failed; the message names the URI (and the bucket when that is missing)."""


def resolve_options(options: Any, key: str = "") -> Any:
    """``storage_options`` with every ``${NAME}`` in a credential field replaced by that environment variable.

    Only credential fields expand, and only names the worker allows (``heal_core/environment.py``): a reference
    anywhere else is an error, not a literal, because the config (which refuses one at the door) is not the only
    way options arrive here."""
    if isinstance(options, dict):
        return {k: resolve_options(v, str(k)) for k, v in options.items()}
    if isinstance(options, list):
        return [resolve_options(v, key) for v in options]
    if isinstance(options, str) and ENV_REFERENCE.search(options):
        if not CREDENTIAL_KEY.search(key):
            raise StorageError(f"storage.storage_options.{key}: ${{NAME}} expands only in credential fields")
        return ENV_REFERENCE.sub(_env_value, options)
    return options


def _env_value(match: re.Match[str]) -> str:
    try:
        check_allowed(match[1], "storage.storage_options")
    except NotAllowed as err:
        raise StorageError(str(err)) from None
    value = os.environ.get(match[1])
    if value is None:
        raise StorageError(f"storage.storage_options refers to ${{{match[1]}}}, which is not set in this process")
    return value


def _fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    # fsspec caches instances per (protocol, options), so resolving a URI on every call is cheap.
    try:
        return fsspec.core.url_to_fs(uri, **resolve_options(storage_options or {}))
    except (ValueError, ImportError) as exc:  # "Protocol not known: foo", or its package is missing
        raise StorageError(f"cannot open {uri}: {exc}") from None


def _missing_bucket(exc: BaseException) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "NoSuchBucket"


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Turn filesystem errors into one StorageError naming the URI, and the bucket when it does not exist."""
    try:
        yield
    except FileNotFoundError as exc:
        if _missing_bucket(exc):
            bucket = uri.split("://", 1)[-1].split("/", 1)[0]
            raise StorageError(f"bucket '{bucket}' does not exist ({uri})") from None
        raise StorageError(f"{uri} does not exist") from None
    except OSError as exc:
        raise StorageError(f"{uri}: {exc}") from exc


def cache_dir() -> Path:
    """This machine's working space (fetched models, file digests): ``HEAL_CACHE_DIR`` or ``~/.cache/heal``."""
    return Path(os.environ.get("HEAL_CACHE_DIR", Path.home() / ".cache" / "heal"))


def check_shared(uri: str) -> None:
    """Deployment runs execute on other workers, often other machines: a relative local path cannot be shared."""
    if "://" not in uri and not uri.startswith("/"):
        raise ValueError(
            f"storage.uri {uri!r} is a relative local path: workers on other machines or in other "
            "directories cannot share it; use s3://... or an absolute path on a shared filesystem"
        )


_PIECE = 16 * 2**20
"""Bytes a streamed copy holds at once."""


def join(uri: str, *parts: str) -> str:
    """A child URI of ``uri``; the same for local paths and ``s3://`` prefixes (``os.path.join`` is not)."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def _place_local(path: str, data: bytes | IO[bytes], exclusive: bool = False) -> bool:
    """Write ``data`` (bytes, or a binary file read to its end in 16 MiB pieces: a checkpoint's shards are larger
    than memory should hold at once) to a hidden temp file beside ``path`` (``.name.tmp-<uuid>``), fsync it, and
    put it in place whole: ``os.replace``, or with ``exclusive`` a hard link, which never replaces an existing name
    (False then). The temp file is removed whatever happens (a SIGKILL can leave one behind, hidden: ``list_files``
    skips it)."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, _PIECE)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(data: bytes, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` so that a reader sees the old object or the complete new one, never a part of it.

    Local: ``_place_local`` (a temp file, fsync'd, swapped in with ``os.replace``). Parent directories are
    created.
    S3: one PUT of the complete bytes (s3fs switches to a multipart upload above 100 MB); S3 makes an object
    visible only when the PUT, or the multipart completion, finishes.
    """
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        if isinstance(fs, LocalFileSystem):
            _place_local(path, data)
        else:
            fs.pipe_file(path, data)


def create(data: bytes, uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Write ``data`` at ``uri`` only if nothing is there, atomically: True when this call created it, False when
    something was already there (another process's lease, say).

    Local: the complete bytes go to a hidden temp file that is hard-linked to the name, and a link never replaces
    an existing name. S3: one PUT with ``If-None-Match: *`` (S3's conditional write, which MinIO has too).
    """
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        if not isinstance(fs, LocalFileSystem):
            try:
                fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            return True
        return _place_local(path, data, exclusive=True)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        return fs.cat_file(path)


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = _fs(uri, storage_options)
    fs.invalidate_cache(path)  # another process (a shard worker) may have written it since s3fs last listed
    with _errors(uri):
        return fs.exists(path)


def _listing(uri: str, fs: Any, path: str, list_call: Callable[..., Any]) -> Any:
    """``list_call(path, detail=True)`` (fsspec's ls or find) as it is now, or None where nothing is there; a
    missing bucket is an error, not an empty listing."""
    fs.invalidate_cache(path)  # another process (a shard worker) may have written there since s3fs last listed
    with _errors(uri):
        try:
            return list_call(path, detail=True)
        except FileNotFoundError as exc:
            if _missing_bucket(exc):
                raise
            return None


def _entries(uri: str, storage_options: dict[str, Any] | None, kind: str) -> list[str]:
    """Sorted names of the entries of ``kind`` (file or directory) directly under ``uri``, hidden names (in-flight
    temp files) left out; none when nothing is there (on S3 an empty "directory" does not exist at all)."""
    fs, path = _fs(uri, storage_options)
    entries = _listing(uri, fs, path, fs.ls) or []
    names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == kind)
    return sorted(n for n in names if not n.startswith("."))


def list_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted URIs of the files directly under ``uri``; ``[]`` for a prefix with nothing under it."""
    return [join(uri, n) for n in _entries(uri, storage_options, "file")]


def list_dirs(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted names (not URIs) of the "directories" directly under ``uri``: prefixes, on S3."""
    return _entries(uri, storage_options, "directory")


def sizes(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """{path relative to ``uri``: bytes} of every file at any depth under ``uri`` (one listing, paginated on S3),
    hidden names left out; ``{}`` when nothing is there."""
    fs, path = _fs(uri, storage_options)
    found = _listing(uri, fs, path, fs.find) or {}
    root = path.rstrip("/")
    out = {}
    for name, info in found.items():
        rel = posixpath.relpath(name, root)
        if not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = int(info.get("size") or 0)
    return out


def remove(uri: str, storage_options: dict[str, Any] | None = None, recursive: bool = False) -> None:
    """Delete an object, or with ``recursive`` everything under a prefix; a missing one is not an error."""
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError as exc:
            if _missing_bucket(exc):
                raise


def write_parquet(
    table: pa.Table, uri: str, storage_options: dict[str, Any] | None = None, compression: str = "zstd"
) -> None:
    """Write ``table`` atomically (see ``write_bytes``): it is serialized in memory first, then written whole."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=compression)
    write_bytes(buf.getvalue().to_pybytes(), uri, storage_options)


class _RangeReads(pafs.FSSpecHandler):
    """pyarrow's handler for an fsspec filesystem, opening files without fsspec's read-ahead cache (s3fs reads
    50 MiB blocks): pyarrow asks for the byte ranges it needs, the footer and then the chosen columns' chunks
    coalesced (``pre_buffer``), and each becomes one ranged GET. Only reads go through here."""

    def open_input_file(self, path: str) -> pa.PythonFile:
        if not self.fs.isfile(path):
            self.fs.cat_file(path, start=0, end=1)  # the error that says why: no such key, or no such bucket
            raise FileNotFoundError(path)
        return pa.PythonFile(self.fs.open(path, mode="rb", cache_type="none"), mode="r")


def _arrow_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[pafs.FileSystem, str]:
    """pyarrow's own filesystem for a local path (memory-mapped reads), else the fsspec one behind ``_RangeReads``."""
    fs, path = _fs(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(_RangeReads(fs)), path


def read_parquet(
    uri: str,
    schema: pa.Schema | None = None,
    storage_options: dict[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read a Parquet file, or only its ``columns``, fetching only those (the footer, then their column chunks:
    ranged reads on S3); with ``schema``, check it (a missing column is an error naming the URI)."""
    if schema is not None and columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    afs, path = _arrow_fs(uri, storage_options)
    with _errors(uri):
        try:
            with afs.open_input_file(path) as source:
                table = pq.read_table(source, columns=None if columns is None else list(columns), pre_buffer=True)
        except pa.ArrowException as exc:  # truncated or corrupt: never return a partial table
            raise StorageError(f"{uri} is not a readable Parquet file: {exc}") from None
    return table if schema is None else conform(table, schema, source=uri)


SCAN_ROWS = 256
"""Rows a scan hands over at a time (``scan``): with 16k-token traces, a few MB of text per batch."""


def scan(
    uris: Sequence[str],
    schema: pa.Schema,
    columns: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    where: ds.Expression | None = None,
) -> pa.RecordBatchReader:
    """Stream the rows of Parquet files (one table's shards, under one storage) as record batches of ``columns``,
    optionally only those matching ``where``: pyarrow.dataset's scanner, reading each file's footer and then only
    those columns' chunks (ranged reads on S3), one file and one batch ahead at most, so memory holds a few
    batches whatever the files add up to. Every file's footer is read and checked before any row is: one that is
    not Parquet (truncated, say), lacks one of ``columns`` or holds one of another type is an error naming its URI,
    so a step fails on a bad shard before it has made anything of the good ones."""
    wanted = pa.schema([schema.field(name) for name in columns])
    if not uris:
        return pa.RecordBatchReader.from_batches(wanted, [])
    afs, _ = _arrow_fs(uris[0], storage_options)
    paths = {_fs(uri, storage_options)[1]: uri for uri in uris}
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True))
    with _errors(uris[0]):
        dataset = ds.dataset(list(paths), schema=schema, format=fmt, filesystem=afs)
        for fragment in dataset.get_fragments():
            _check_fragment(fragment, wanted, paths[fragment.path])
    scanner = dataset.scanner(
        columns=list(columns), filter=where, batch_size=SCAN_ROWS, fragment_readahead=1, batch_readahead=1
    )
    return pa.RecordBatchReader.from_batches(wanted, (batch.cast(wanted) for batch in scanner.to_batches()))


def _check_fragment(fragment: ds.ParquetFileFragment, wanted: pa.Schema, uri: str) -> None:
    """``scan``'s check of one file, from its footer alone."""
    with _errors(uri):
        try:
            found = fragment.physical_schema
        except pa.ArrowException as exc:
            raise StorageError(f"{uri} is not a readable Parquet file: {exc}") from None
    missing = [name for name in wanted.names if name not in found.names]
    if missing:
        raise StorageError(f"{uri}: missing column(s) {missing}")
    for field in wanted:
        if found.field(field.name).type != field.type:
            raise StorageError(f"{uri}: column {field.name} is {found.field(field.name).type}, not {field.type}")


def write_json(obj: Any, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes((json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode(), uri, storage_options)


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    data = read_bytes(uri, storage_options)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from None


def put_dir(
    local_dir: str | os.PathLike[str], uri: str, storage_options: dict[str, Any] | None = None, last: str | None = None
) -> None:
    """Upload a local directory file by file (each write atomic); the file named ``last`` goes up last.

    A directory is not one object, so completeness needs a marker: uploading the marker last means a reader
    that finds it also finds every other file.
    """
    root = os.fspath(local_dir)
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    for rel in sorted(files, key=lambda r: r == last):
        put_file(os.path.join(root, rel), join(uri, *rel.split(os.sep)), storage_options)


def put_file(local: str | os.PathLike[str], uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Upload one local file as ``write_bytes`` writes bytes (a reader sees all of it or nothing), streamed: never
    the whole file in memory. S3: s3fs's ``put_file`` (multipart above its block size, visible on completion)."""
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        if isinstance(fs, LocalFileSystem):
            with open(local, "rb") as f:
                _place_local(path, f)
        else:
            fs.put_file(os.fspath(local), path)


def get_dir(
    uri: str, local_dir: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, last: str | None = None
) -> None:
    """Download every file under ``uri`` into ``local_dir``, keeping relative paths, the file named ``last`` last
    (a completion marker: ``put_dir``'s order, so a reader that finds it also finds the rest).

    Every key is checked before anything is written: one that would land outside ``local_dir`` (``..``, an
    absolute key, or through a symlink in the destination) is a ``StorageError`` naming it, because the keys are
    what a storage endpoint lists, and an endpoint is not trusted with the worker's filesystem."""
    fs, path = _fs(uri, storage_options)
    with _errors(uri):
        found = fs.find(path)
    root = Path(os.fspath(local_dir)).resolve()
    planned = []
    prefix = path.rstrip("/") + "/"
    for remote in found:
        rel = remote[len(prefix) :] if remote.startswith(prefix) else remote  # as listed: never normalised away
        if posixpath.basename(rel).startswith("."):
            continue
        planned.append((rel, _inside(root, rel, uri)))
    for rel, target in sorted(planned, key=lambda p: p[0] == last):
        get_file(join(uri, rel), target, storage_options)


def get_file(uri: str, local: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
    """Download one object to ``local``, streamed (never whole in memory) and put in place whole."""
    fs, path = _fs(uri, storage_options)
    with _errors(uri), fs.open(path, "rb") as remote_file:
        _place_local(os.fspath(local), remote_file)


def _inside(root: Path, rel: str, uri: str) -> Path:
    """``root / rel``, refused unless it stays inside ``root`` once resolved."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or any(":" in p or "\\" in p for p in parts):
        raise StorageError(f"{uri}: the key {rel!r} would be written outside {root}; nothing was written")
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root):
        raise StorageError(f"{uri}: the key {rel!r} resolves outside {root} (a symlink); nothing was written")
    return target
