"""Test data: trajectory rows (every column a plain default, the lineage groups from a few keywords) and problem
files of the demo's problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heal_core.config import HealConfig, parse_config
from heal_core.demo import demo_defaults, demo_problems
from heal_core.pure import PureResult
from heal_core.stages import Stage
from heal_core.trajectory import Hint, Repair, Trajectory


def trajectory(
    sample_id: str = "s",
    stage: int = 1,
    problem_id: str = "p",
    *,
    leaked: bool = False,
    wave: int = 0,
    parent: str = "p|s1|0",
    pure: str | None = None,
    **columns: Any,
) -> Trajectory:
    """A row of ``stage``: a hinted one gets a ``Hint`` (``leaked``, ``wave``), a GEAR one a ``Repair`` of
    ``parent``, and ``pure`` (a verdict) a ``PureResult``; ``columns`` override the common columns."""
    stage = Stage(stage)
    values: dict[str, Any] = {
        "prompt": f"P{problem_id}",
        "gold_answer": "4",
        "sample_index": 0,
        "text": "t",
        "token_ids": [],
        "entropy": [],
        "finish_reason": "stop",
        "verified": True,
        "extracted_answer": None,
        "teacher": "t",
        "seed": 0,
        "config_hash": "h",
        "hint": Hint("h", leaked, wave) if stage > Stage.BASE else None,
        "repair": Repair(parent, 3, 1, 1.5, 10) if stage == Stage.REPAIR else None,
        "pure": PureResult(pure, "", [], [], None) if pure is not None else None,
    }
    values.update(columns)
    values.setdefault("verify_status", "correct" if values["verified"] else "wrong")
    return Trajectory(sample_id=sample_id, problem_id=problem_id, stage=stage, **values)


def problems_file(path: Path, split: str, count: int) -> Path:
    """The first ``count`` demo problems of ``split`` as a JSONL problems file (the default field names)."""
    path.write_text(
        "".join(
            json.dumps({"id": p.problem_id, "problem": p.problem, "answer": p.answer}) + "\n"
            for p in demo_problems(split)[:count]
        )
    )
    return path


def reduced_config(root: Path, problems: int, *extra: str) -> HealConfig:
    """The embedded default on ``problems`` demo problems in shards of 4, 3 held-out problems, heal and rs_sft for
    one seed and epoch, stored under ``root / "store"``: the whole pipeline in about a minute."""
    return parse_config(
        demo_defaults(),
        [
            f"problems.uri={problems_file(root / f'problems-{problems}.jsonl', 'generation', problems)}",
            f"evaluation.uri={problems_file(root / 'eval.jsonl', 'eval', 3)}",
            "evaluation.samples=2",
            f"storage.uri={root / 'store'}",
            "orchestration.shard_size=4",
            "pace.epochs=1",
            "pace.batch_size=4",
            "pace.seeds=[0]",
            "pace.variants=[heal,rs_sft]",
            *extra,
        ],
    )


def built_datasets(rows: list[Trajectory], cfg: HealConfig, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every PACE dataset of ``rows`` (``kept`` as set), assembled as a run's curriculum step assembles it, as
    TRL examples."""
    import pyarrow.parquet as pq

    from heal_core import pace
    from heal_core.trajectory import to_table

    table = to_table(rows)
    out = pace.build(lambda columns: table.select(list(columns)).to_reader(), cfg, workdir)
    return {name: pq.read_table(path).to_pylist() for name, (path, _) in out.items()}
