"""heal_core.storage against a local directory and a real S3 HTTP endpoint (moto's standalone server)."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest

from heal_core import storage
from heal_core.schema import TRAJECTORY_SCHEMA, SchemaError, to_table
from heal_core.storage import StorageError


def _trajectories() -> pa.Table:
    base = {
        "problem_id": "gsm8k-000001",
        "prompt": "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in all?",
        "gold_answer": "72",
        "teacher": "Qwen/Qwen2.5-7B-Instruct",
        "seed": 0,
        "config_hash": "0123456789abcdef",
    }
    rows = [
        {
            **base,
            "sample_id": "gsm8k-000001-s1-0",
            "stage": 1,
            "sample_index": 0,
            "text": "In May she sold 48 / 2 = 24.\n\nIn all 48 + 24 = 72.\n\n\\boxed{72}",
            "token_ids": [641, 3217, 1364, 6088],
            "num_tokens": 4,
            "entropy": [0.5, 0.25, 1.75, 0.0],
            "finish_reason": "stop",
            "verified": True,
            "verify_status": "correct",
            "extracted_answer": "72",
            "pure_answer_nll": [2.5, 0.5],
            "pure_step_ppl": [1.25, 1.5],
            "pure_ratio": 0.19,
            "pure_verdict": "keep",
            "kept": True,
        },
        {
            **base,
            "sample_id": "gsm8k-000001-s3-7",
            "stage": 3,
            "sample_index": 7,
            "text": "In May she sold 24.\n\nThe total is 72.\n\n\\boxed{72}",
            "token_ids": [],
            "num_tokens": 0,
            "entropy": None,
            "finish_reason": "length",
            "verified": False,
            "verify_status": "no_answer",
            "hint": "Hint: the final answer is 72.",
            "leaked_hint": False,
            "parent_sample_id": "gsm8k-000001-s1-3",
            "breakpoint_token": 12,
            "breakpoint_step": 1,
            "breakpoint_surge": 2.5,
            "prefix_chars": 20,
            "kept": False,
        },
    ]
    return to_table(rows, TRAJECTORY_SCHEMA)


@pytest.fixture(params=["local", "file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty base URI of each kind: plain path, file:// URI, and a new bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "data")
    if request.param == "file":
        return f"file://{tmp_path}/data"
    request.getfixturevalue("s3_endpoint")
    bucket = f"heal-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prefix"


def test_parquet_round_trip(root: str) -> None:
    table = _trajectories()
    uri = storage.join(root, "runs", "r1", "stage1", "shard-00000.parquet")
    assert not storage.exists(uri)
    storage.write_parquet(table, uri)
    assert storage.exists(uri)
    back = storage.read_parquet(uri, schema=TRAJECTORY_SCHEMA)
    assert back.equals(table)
    assert back.column("token_ids").to_pylist() == [[641, 3217, 1364, 6088], []]
    assert back.column("entropy").to_pylist() == [[0.5, 0.25, 1.75, 0.0], None]


def test_json_and_bytes_round_trip(root: str) -> None:
    obj = {"run": "r1", "shards": [0, 1, 2], "pass_rate": 0.5, "note": "déjà vu", "done": None}
    storage.write_json(obj, storage.join(root, "manifest.json"))
    assert storage.read_json(storage.join(root, "manifest.json")) == obj
    storage.write_bytes(b"\x00\xffraw", storage.join(root, "blob.bin"))
    assert storage.read_bytes(storage.join(root, "blob.bin")) == b"\x00\xffraw"


def test_list_files_skips_hidden_and_directories(root: str) -> None:
    assert storage.list_files(storage.join(root, "stage1")) == []
    for name in ["b.parquet", "a.parquet", ".a.parquet.tmp-123", "sub/c.parquet"]:
        storage.write_bytes(b"x", storage.join(root, "stage1", name))
    assert storage.list_files(storage.join(root, "stage1")) == [
        storage.join(root, "stage1", "a.parquet"),
        storage.join(root, "stage1", "b.parquet"),
    ]


def test_read_with_schema_names_uri_of_missing_column(root: str) -> None:
    uri = storage.join(root, "old.parquet")
    storage.write_parquet(_trajectories().drop_columns(["pure_ratio"]), uri)
    with pytest.raises(SchemaError, match=r"old\.parquet.*pure_ratio"):
        storage.read_parquet(uri, schema=TRAJECTORY_SCHEMA)


def test_truncated_parquet_is_an_error_naming_the_uri(root: str) -> None:
    uri = storage.join(root, "shard.parquet")
    storage.write_parquet(_trajectories(), uri)
    data = storage.read_bytes(uri)
    storage.write_bytes(data[: len(data) // 2], uri)
    with pytest.raises(StorageError, match="not a readable Parquet file") as err:
        storage.read_parquet(uri)
    assert uri in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "retyped"])
def test_a_scan_names_a_bad_shard_before_it_yields_a_row(root: str, damage: str) -> None:
    """One bad shard of three, truncated or with a column of another type (which a cast would turn into wrong
    values or fail on mid-stream, naming no file): the scan fails when it is opened, naming that shard."""
    uris = [storage.join(root, "samples", f"shard-{i:05d}.parquet") for i in range(3)]
    for uri in uris:
        storage.write_parquet(_trajectories(), uri)
    if damage == "truncated":
        data = storage.read_bytes(uris[1])
        storage.write_bytes(data[: len(data) // 2], uris[1])
    else:
        table = _trajectories()
        storage.write_parquet(
            table.set_column(table.schema.get_field_index("verified"), "verified", pa.array(["yes"] * table.num_rows)),
            uris[1],
        )
    with pytest.raises(StorageError) as err:
        storage.scan(uris, TRAJECTORY_SCHEMA, ["sample_id", "verified"])
    assert uris[1] in str(err.value)
    assert ("not a readable Parquet file" if damage == "truncated" else "column verified is string, not bool") in str(
        err.value
    )


def test_missing_object_names_the_uri(root: str) -> None:
    uri = storage.join(root, "nothing", "here.parquet")
    with pytest.raises(StorageError, match="does not exist") as err:
        storage.read_parquet(uri)
    assert uri in str(err.value)


@pytest.mark.parametrize(
    "op",
    [
        lambda uri: storage.read_parquet(uri),
        lambda uri: storage.write_parquet(_trajectories(), uri),
        lambda uri: storage.list_files(uri.rsplit("/", 1)[0]),
    ],
    ids=["read", "write", "list"],
)
def test_missing_bucket_is_one_clear_message(s3_endpoint: str, op) -> None:
    bucket = f"nope-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{bucket}/runs/x.parquet"
    with pytest.raises(StorageError) as err:
        op(uri)
    assert f"bucket '{bucket}' does not exist" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no botocore traceback attached


def test_storage_options_carry_the_endpoint_and_env_references(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
        monkeypatch.delenv(key)
    options = {"endpoint_url": s3_endpoint, "key": "${HEAL_TEST_KEY}", "secret": "${HEAL_TEST_SECRET}"}
    with pytest.raises(StorageError, match=r"refers to \$\{HEAL_TEST_KEY\}, which is not set"):
        storage.exists("s3://any/x", storage_options=options)
    monkeypatch.setenv("HEAL_TEST_KEY", "testing")
    monkeypatch.setenv("HEAL_TEST_SECRET", "testing")
    bucket = f"heal-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/runs/r1/shard.parquet"
    storage.write_parquet(_trajectories(), uri, storage_options=options)
    assert storage.list_files(f"s3://{bucket}/runs/r1", storage_options=options) == [uri]
    assert storage.read_parquet(uri, TRAJECTORY_SCHEMA, storage_options=options).equals(_trajectories())


def test_unknown_protocol_is_named() -> None:
    with pytest.raises(StorageError, match="nosuchproto"):
        storage.read_bytes("nosuchproto://bucket/x.parquet")


@contextlib.contextmanager
def _crash_before_rename() -> Iterator[None]:
    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash right before the rename")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", crash)
        yield


@contextlib.contextmanager
def _disk_full_midway() -> Iterator[None]:
    """A real partial write: past RLIMIT_FSIZE, write(2) fails with EFBIG after part of the data is on disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("failure", [_crash_before_rename, _disk_full_midway], ids=["crash_before_rename", "disk_full"])
def test_failed_write_leaves_old_object_and_no_temp_file(tmp_path: Path, failure) -> None:
    uri = str(tmp_path / "stage1" / "shard.parquet")
    old = _trajectories()
    storage.write_parquet(old, uri)
    big = pa.table({"x": np.arange(1_000_000)})  # 8 MB uncompressed: far past the 64 KB limit
    with failure(), pytest.raises(StorageError, match="shard.parquet"):
        storage.write_parquet(big, uri, compression="none")
    assert os.listdir(tmp_path / "stage1") == ["shard.parquet"]
    assert storage.read_parquet(uri, TRAJECTORY_SCHEMA).equals(old)


_WRITER = """
import sys
import numpy as np
import pyarrow as pa
from heal_core import storage

uri, rows = sys.argv[1], int(sys.argv[2])
print("writing", flush=True)
generation = 0
while True:
    generation += 1
    storage.write_parquet(pa.table({"x": np.arange(rows) + generation}), uri, compression="none")
"""


def test_sigkilled_writer_never_leaves_a_partial_object(tmp_path: Path) -> None:
    directory = tmp_path / "stage1"
    uri = str(directory / "shard.parquet")
    rows = 1_000_000  # 8 MB per write, so a kill often lands inside the temp-file write or fsync
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def temp_files() -> set[str]:
        return {n for n in os.listdir(directory) if n.startswith(".")} if directory.exists() else set()

    def check() -> None:
        listed = storage.list_files(str(directory))
        assert listed in ([], [uri])
        if listed:
            x = storage.read_parquet(uri).column("x")
            assert len(x) == rows and x[-1].as_py() - x[0].as_py() == rows - 1

    # Two kills at a random moment (a concurrent reader checks meanwhile), one as soon as a temp file shows,
    # which is inside the temp-file write or fsync nearly every time.
    for when in ["random", "random", "mid_write"]:
        stale = temp_files()  # left by an earlier kill
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, uri, str(rows)], env=env, stdout=subprocess.PIPE)
        try:
            assert writer.stdout.readline() == b"writing\n"
            deadline = time.monotonic() + (random.uniform(0.05, 1.0) if when == "random" else 10)
            while time.monotonic() < deadline:
                if when == "random":
                    check()  # a concurrent reader never sees a partial object
                elif temp_files() - stale:
                    break
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
        check()
        left = os.listdir(directory) if directory.exists() else []
        assert all(n == "shard.parquet" or n.startswith(".shard.parquet.tmp-") for n in left)


def test_directory_round_trip_uploads_marker_last(tmp_path, s3_endpoint):
    import boto3

    from heal_core.storage import exists, get_dir, put_dir

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"w" * 1000)
    (src / "sub" / "tok.json").write_text("{}")
    (src / "DONE").write_text("ok")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="dirs")
    for uri in (str(tmp_path / "remote"), "s3://dirs/run/model"):
        put_dir(src, uri, last="DONE")
        assert exists(uri + "/DONE") and exists(uri + "/sub/tok.json")
        dst = tmp_path / f"copy-{uri.count('/')}"
        get_dir(uri, dst)
        assert (dst / "weights.bin").read_bytes() == b"w" * 1000
        assert (dst / "sub" / "tok.json").read_text() == "{}"
        assert (dst / "DONE").read_text() == "ok"


def test_get_dir_refuses_a_listed_key_that_leaves_the_destination_and_writes_nothing(tmp_path, s3_endpoint):
    """A storage endpoint is not trusted with the worker's filesystem: S3 keys are plain strings, and one that
    climbs out of the destination (``m/../../x``) must not be written there, nor anything else of the listing."""
    import boto3

    from heal_core.storage import StorageError, get_dir

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="hostile")
    s3.put_object(Bucket="hostile", Key="m/a-weights.bin", Body=b"w")
    s3.put_object(Bucket="hostile", Key="m/../../x", Body=b"owned")
    dst = tmp_path / "cache" / "models" / "m"
    with pytest.raises(StorageError, match=r"the key '\.\./\.\./x' would be written outside"):
        get_dir("s3://hostile/m", dst)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_get_dir_refuses_a_key_that_resolves_through_a_symlink_out(tmp_path):
    from heal_core.storage import StorageError, get_dir

    (tmp_path / "remote" / "link").mkdir(parents=True)
    (tmp_path / "remote" / "link" / "x").write_bytes(b"owned")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(StorageError, match="resolves outside"):
        get_dir(str(tmp_path / "remote"), dst)
    assert not (tmp_path / "elsewhere" / "x").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_writes_only_where_nothing_is(tmp_path, where, request):
    from heal_core.storage import create, read_bytes

    if where == "s3":
        import boto3

        boto3.client("s3", endpoint_url=request.getfixturevalue("s3_endpoint")).create_bucket(Bucket="leases")
        uri = "s3://leases/run/lease"
    else:
        uri = str(tmp_path / "run" / "lease")
    assert create(b"first", uri) and not create(b"second", uri)
    assert read_bytes(uri) == b"first"


def _wide_shard(rows: int, tokens: int, shard: int) -> pa.Table:
    """Trajectory rows whose texts, token ids and entropy traces are most of their bytes, as a run's are."""
    rng = np.random.default_rng(shard)
    base = _trajectories().slice(0, 1).to_pylist()[0]
    records = [
        {
            **base,
            "sample_id": f"s{shard}-{i}",
            "text": " ".join(map(str, rng.integers(0, 10**6, tokens))),
            "token_ids": rng.integers(0, 150_000, tokens).tolist(),
            "num_tokens": tokens,
            "entropy": rng.random(tokens, dtype=np.float32).tolist(),
        }
        for i in range(rows)
    ]
    return to_table(records, TRAJECTORY_SCHEMA)


def test_reading_some_columns_fetches_those_and_a_constant_number_of_requests_per_shard(tmp_path):
    """On S3 (moto behind a byte-counting proxy): reading the columns a step needs (no texts) fetches the footer and
    their chunks, not the object, in the same few requests per shard however many shards a scan spans."""
    from servers import TcpProxy, moto_server

    log = tmp_path / "moto.log"
    with moto_server(log) as url:
        proxy = TcpProxy(int(url.rsplit(":", 1)[1]))
        proxy.up()
        options = {"endpoint_url": proxy.url, "key": "testing", "secret": "testing"}
        boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="wide")
        uris = [f"s3://wide/samples/shard-{s:05d}.parquet" for s in range(4)]
        for shard, uri in enumerate(uris):
            storage.write_parquet(_wide_shard(64, 2000, shard), uri, options)
        size = sum(storage.sizes("s3://wide/samples", options).values()) / len(uris)
        columns = ["sample_id", "problem_id", "stage", "kept", "verified", "pure_ratio"]

        def fetched(read) -> tuple[float, float]:
            """(bytes, requests) per shard of ``read``."""
            requests, before = len(log.read_text().splitlines()), proxy.downloaded
            shards = read()
            return (proxy.downloaded - before) / shards, (len(log.read_text().splitlines()) - requests) / shards

        def whole(n: int) -> int:
            for uri in uris[:n]:
                assert storage.read_parquet(uri, TRAJECTORY_SCHEMA, options, columns).num_rows == 64
            return n

        def scanned(n: int) -> int:
            assert storage.scan(uris[:n], TRAJECTORY_SCHEMA, columns, options).read_all().num_rows == 64 * n
            return n

        for read in (whole, scanned):
            one, four = fetched(lambda read=read: read(1)), fetched(lambda read=read: read(4))
            assert one[0] <= 0.1 * size and four[0] <= 0.1 * size, (one, four, size)
            assert 1 <= four[1] <= one[1] <= 6, (one, four)
        full_bytes, _ = fetched(lambda: len([storage.read_parquet(uris[0], TRAJECTORY_SCHEMA, options)]))
        assert full_bytes >= size  # every column: the whole object
