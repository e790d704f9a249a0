"""Parquet write/read throughput of trajectory tables: in memory, a local path, an S3 endpoint; zstd vs snappy.

The table is one synthetic shard in ``TRAJECTORY_SCHEMA``: ``--problems`` x ``--samples`` rows (default
64 x 30, the default shard size at the paper's N), about ``--tokens`` generated tokens per row (log-normal,
capped at 4096) with their token ids (Zipf over a 152k vocabulary), text spelled from those ids, one float32
entropy per token (mostly near 0 with surges), and hint / GEAR / PURE lineage on a share of the rows.

Writes and reads go through heal's own ``storage.write_parquet`` / ``read_parquet`` (serialise in memory,
then one atomic write: fsync + rename locally, one PUT on S3; read = the footer, then every column's chunks in
ranged reads, decode, schema check). The
``memory`` rows are the encode/decode alone (pyarrow), so the rest of a local or S3 figure is transport.
MB/s is the table's in-memory Arrow size (the same for both codecs) per second; the best of ``--repeats``.

The S3 endpoint is moto's standalone server started on a free local port (``pip install 'moto[server]'``,
a dev dependency), or any endpoint given with ``--endpoint`` (MinIO); moto is pure Python on the same
machine, so its figures are a floor for the S3 code path, not a measure of S3.

The row-group table encodes the zstd table with row groups of several sizes: heal selects columns, not rows
(a read fetches the footer and the chosen columns' chunks), so smaller groups only cost size and time.

    python bench/storage.py [--problems 64] [--samples 30] [--tokens 1500] [--endpoint URL] [--quick]

Last line: the headline figures, zstd's file size relative to snappy and zstd's MB/s (write/read) per target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test suite's server helpers
from servers import moto_server

from heal_core import storage
from heal_core.schema import TRAJECTORY_SCHEMA, conform

VOCAB = 151_936  # Qwen2.5's
CODECS = ("zstd", "snappy")
SYLLABLES = ["ka", "lo", "mi", "nu", "re", "si", "to", "va", "ze", " ", " ", "\n\n", "=", "+", "1", "2", "7"]


def _word(token: int) -> str:
    """A deterministic spelling of a token id, 1-4 syllables: text that follows the ids' statistics."""
    parts, t = [], token
    for _ in range(1 + token % 4):
        parts.append(SYLLABLES[t % len(SYLLABLES)])
        t //= len(SYLLABLES)
    return "".join(parts)


def shard_table(problems: int, samples: int, mean_tokens: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = problems * samples
    lengths = np.minimum(4096, np.maximum(8, rng.lognormal(np.log(mean_tokens), 0.5, rows))).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ranks = np.minimum(rng.zipf(1.2, int(offsets[-1])), VOCAB) - 1
    tokens = ((ranks * 2654435761) % VOCAB).astype(np.int32)  # frequent ranks scattered over the id space
    surges = rng.random(tokens.size) < 0.03
    entropy = np.where(surges, rng.gamma(2.0, 1.0, tokens.size), rng.exponential(0.08, tokens.size)).astype(np.float32)
    spelling = {int(t): _word(int(t)) for t in np.unique(tokens)}
    texts = ["".join(spelling[int(t)] for t in tokens[offsets[i] : offsets[i + 1]]) for i in range(rows)]

    problem = np.repeat(np.arange(problems), samples)
    index = np.tile(np.arange(samples), problems)
    stage = np.where(rng.random(rows) < 0.8, 1, rng.choice([2, 3], rows)).astype(np.int8)
    verified = rng.random(rows) < 0.6
    later = stage > 1
    steps = rng.integers(3, 40, rows)
    pure_offsets = np.concatenate([[0], np.cumsum(np.where(later, steps, 0))]).astype(np.int32)
    pure_values = rng.gamma(1.5, 0.7, int(pure_offsets[-1])).astype(np.float32)

    def nulls(values, mask) -> pa.Array:
        return pa.array([v if m else None for v, m in zip(values, mask)])

    prompts = [f"Problem {p}: " + _word(p * 7919) * 40 + " What is the result?" for p in range(problems)]
    columns = {
        "sample_id": pa.array([f"p{p:05d}|s{s}|{i}" for p, s, i in zip(problem, stage, index)]),
        "problem_id": pa.array([f"p{p:05d}" for p in problem]),
        "prompt": pa.array([prompts[p] for p in problem]),
        "gold_answer": pa.array([str(p * 37 % 1000) for p in problem]),
        "stage": pa.array(stage),
        "sample_index": pa.array(index.astype(np.int32)),
        "text": pa.array(texts),
        "token_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens)),
        "num_tokens": pa.array(lengths),
        "entropy": pa.ListArray.from_arrays(pa.array(offsets), pa.array(entropy)),
        "finish_reason": pa.array(np.where(lengths >= 4096, "length", "stop")),
        "verified": pa.array(verified),
        "verify_status": pa.array(np.where(verified, "correct", "wrong")),
        "extracted_answer": pa.array(
            [str(p * 37 % 1000) if v else str(i) for p, v, i in zip(problem, verified, index)]
        ),
        "judge_verdict": pa.nulls(rows, pa.string()),  # judge.enabled is off by default
        "hint": nulls([prompts[p] + " Hint: the answer is ..." for p in problem], later),
        "leaked_hint": nulls([False] * rows, later),
        "wave": nulls([0] * rows, later),
        "parent_sample_id": nulls([f"p{p:05d}|s1|{i}" for p, i in zip(problem, index)], stage == 3),
        "breakpoint_token": nulls((lengths // 5).tolist(), stage == 3),
        "breakpoint_step": nulls((steps // 4).tolist(), stage == 3),
        "breakpoint_surge": nulls(rng.random(rows).tolist(), stage == 3),
        "prefix_chars": nulls((lengths // 2).tolist(), stage == 3),
        "pure_answer_nll": pa.ListArray.from_arrays(
            pa.array(pure_offsets), pa.array(pure_values), mask=pa.array(~later)
        ),
        "pure_step_ppl": pa.ListArray.from_arrays(
            pa.array(pure_offsets), pa.array(pure_values + 1), mask=pa.array(~later)
        ),
        "pure_ratio": nulls(rng.random(rows).tolist(), later),
        "pure_verdict": nulls(["keep"] * rows, later),
        "pure_reason": nulls([""] * rows, later),
        "kept": pa.array(verified & (index < 4)),
        "teacher": pa.array(["Qwen/Qwen2.5-7B-Instruct"] * rows),
        "seed": pa.array(np.full(rows, 0, dtype=np.int64)),
        "config_hash": pa.array(["0123456789abcdef"] * rows),
    }
    return conform(pa.table(columns), TRAJECTORY_SCHEMA, source="synthetic shard")


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def encode(table: pa.Table, compression: str, row_group_size: int | None = None) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=compression, row_group_size=row_group_size)
    return buf.getvalue().to_pybytes()


@contextlib.contextmanager
def moto(tmp: str) -> Iterator[str | None]:
    """moto's standalone S3 server (the test suite's, tests/servers.py); None when moto is not installed."""
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        yield None
        return
    with moto_server(Path(tmp) / "moto.log") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=1500, help="median generated tokens per trajectory")
    parser.add_argument("--row-groups", type=int, nargs="+", default=[128, 512], help="besides one per file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 endpoint to use instead of starting moto (credentials: AWS_* env)")
    parser.add_argument("--bucket", default=None, help="with --endpoint: an existing bucket (default: create one)")
    parser.add_argument("--quick", action="store_true", help="smallest settings (CI): checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.samples, args.tokens, args.row_groups, args.repeats = 4, 8, 100, [8], 1

    started = time.perf_counter()
    table = shard_table(args.problems, args.samples, args.tokens)
    mb = table.nbytes / 1e6
    tokens = sum(table["num_tokens"].to_pylist())
    print(
        f"table: {table.num_rows} rows, {tokens:,} tokens, {mb:.1f} MB in Arrow memory "
        f"(built in {time.perf_counter() - started:.1f} s); best of {args.repeats}; pyarrow {pa.__version__}"
    )

    results: dict[tuple[str, str], tuple[float, float, float]] = {}  # (target, codec) -> (file MB, write s, read s)
    for codec in CODECS:
        data = encode(table, codec)
        write_s = best(lambda codec=codec: encode(table, codec), args.repeats)
        read_s = best(lambda data=data: conform(pq.read_table(pa.BufferReader(data)), TRAJECTORY_SCHEMA), args.repeats)
        results[("memory", codec)] = (len(data) / 1e6, write_s, read_s)

    def transport(target: str, root: str, options: dict | None) -> None:
        for codec in CODECS:
            uri = storage.join(root, f"{uuid.uuid4().hex}-{codec}.parquet")
            write_s = best(
                lambda uri=uri, codec=codec: storage.write_parquet(table, uri, options, compression=codec), args.repeats
            )
            read_s = best(lambda uri=uri: storage.read_parquet(uri, TRAJECTORY_SCHEMA, options), args.repeats)
            if not storage.read_parquet(uri, TRAJECTORY_SCHEMA, options).equals(table):
                raise SystemExit(f"{uri}: the table read back differs from the one written")
            results[(target, codec)] = (len(storage.read_bytes(uri, options)) / 1e6, write_s, read_s)

    with tempfile.TemporaryDirectory() as tmp:
        transport("local", tmp, None)

    s3_note = ""
    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint or stack.enter_context(moto(stack.enter_context(tempfile.TemporaryDirectory())))
        if endpoint is None:
            s3_note = "S3 skipped: moto is not installed (pip install 'moto[server]') and no --endpoint was given"
        else:
            import fsspec

            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            options = {"endpoint_url": endpoint}
            if not args.endpoint:
                options |= {"key": "testing", "secret": "testing"}
            bucket = args.bucket or f"heal-bench-{uuid.uuid4().hex[:8]}"
            if not args.bucket:
                fsspec.filesystem("s3", **options).mkdir(bucket)
            transport("s3 (moto)" if not args.endpoint else "s3", f"s3://{bucket}/bench", options)

    print()
    print("| target | codec | file MB | size vs Arrow | write MB/s | read MB/s |")
    print("|---|---|---|---|---|---|")
    for (target, codec), (file_mb, write_s, read_s) in results.items():
        print(f"| {target} | {codec} | {file_mb:.2f} | {file_mb / mb:.2f} | {mb / write_s:,.0f} | {mb / read_s:,.0f} |")
    if s3_note:
        print(f"\n{s3_note}")

    print()
    print("| row group (rows) | groups | zstd file MB | encode MB/s | decode MB/s |")
    print("|---|---|---|---|---|")
    for size in [*sorted(args.row_groups), None]:
        if size is not None and size >= table.num_rows:
            continue
        data = encode(table, "zstd", size)
        groups = pq.ParquetFile(pa.BufferReader(data)).metadata.num_row_groups
        write_s = best(lambda size=size: encode(table, "zstd", size), args.repeats)
        read_s = best(lambda data=data: pq.read_table(pa.BufferReader(data)), args.repeats)
        label = size if size is not None else f"all ({table.num_rows}, heal's default)"
        print(f"| {label} | {groups} | {len(data) / 1e6:.2f} | {mb / write_s:,.0f} | {mb / read_s:,.0f} |")

    print()
    size_ratio = results[("memory", "zstd")][0] / results[("memory", "snappy")][0]
    per_target = "; ".join(
        f"{target} {mb / results[(target, 'zstd')][1]:,.0f}/{mb / results[(target, 'zstd')][2]:,.0f}"
        for target in dict.fromkeys(t for t, _ in results)
    )
    print(f"zstd file size vs snappy: {size_ratio:.2f}x; zstd write/read MB/s: {per_target}")


if __name__ == "__main__":
    main()
