"""Per-step fingerprints: each step's output is keyed only by the settings that shape it, so a run that changes a
later step re-uses every earlier step's output instead of paying for the teacher again.

``HealConfig.config_hash`` covers every setting and names a run's config; these name what a step made:

* ``generation``: the teacher's completions and PURE's scores of them. The teacher's identity (its resolved
  files, ``model_identity``), templates, sampling, Stage II's and GEAR's draws, PURE's scoring inputs
  (``answer_lead``, ``eps`` and ``enabled``) and the judge. It keys the generation store
  (``heal_core/generation_store.py``).
* ``selection``: which rows are kept and, through that, which waves are drawn (issue H's early stop: a problem
  with its cap of kept rows gets no further wave): PURE's λ and leap thresholds, the caps and the wave sizes.
  A stored problem drawn under another selection is *re-selected*: its stored completions and PURE scores are
  replayed (``heal_core/replay.py``), so a new λ re-judges the stored U and P, and only waves that are now
  missing, or rows never scored, reach the teacher.
* ``training``: how a (variant, seed) is trained from a run's data, which a run derived from it (``heal train``,
  ``heal eval``: ``heal_core/derived.py``) shares: a derived run with the same ``training`` adopts the run's
  models instead of training them again.
* ``evaluation``: how every model is sampled and scored on a set; with the model's identity and the set's content
  it keys the evaluation store (``tasks/evaluation.py``), so the teacher and the student base are evaluated once.

Execution-only settings (storage, pools, retries, ``shard_size``, ``max_batch_sequences``: rows are seeded by
what they are, ``heal_core/seeds.py``) are in no fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from heal_core import storage
from heal_core.config import EXECUTION_ONLY, HealConfig

SELECTION = {"pure": {"lam", "leap_drop_share", "leap_log_ppl_margin"}, "hints": {"max_per_problem", "wave_samples"},
             "gear": {"max_per_problem", "wave_paths"}, "pace": {"stage1_cap_per_problem"}}
# The config hash's execution-only teacher settings, and what rows do not depend on: the batch size and device (rows
# are seeded by what they are), and the ``model`` path, which the teacher's identity names instead (the same
# checkpoint at another path on another cluster is the same teacher).
_TEACHER_EXECUTION = {**EXECUTION_ONLY["teacher"], "model": True, "max_batch_sequences": True, "device": True}


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(path: str) -> str:
    """What a model reference names: for a local directory, every file's name and the sha256 of its bytes (a
    checkpoint replaced under the same path, even with the same shapes, is another model; the same checkpoint at
    another path is the same model); for a hub name, the name."""
    root = Path(path)
    if not root.is_dir():
        return path
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return digest([(str(p.relative_to(root)), file_digest(p)) for p in files])


def file_digest(path: Path) -> str:
    """sha256 of a file, read once per machine: kept in ``HEAL_CACHE_DIR`` under the file's absolute path, size and
    modification time, so every later process (each shard's flow run on a worker) gets it without reading the
    file again (a 15 GB checkpoint takes about 15 s to hash)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    cached = storage.cache_dir() / "file-digests" / key
    if cached.is_file():
        return cached.read_text()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)
    storage.write_bytes(sha.hexdigest().encode(), str(cached))
    return sha.hexdigest()


def _section(cfg: HealConfig, name: str, exclude: Any = None) -> dict[str, Any]:
    return getattr(cfg, name).model_dump(mode="json", exclude=exclude)


def generation(cfg: HealConfig, teacher_identity: str) -> str:
    return digest({
        "teacher": _section(cfg, "teacher", _TEACHER_EXECUTION), "teacher_identity": teacher_identity,
        "hints": _section(cfg, "hints", SELECTION["hints"]), "gear": _section(cfg, "gear", SELECTION["gear"]),
        "pure": _section(cfg, "pure", SELECTION["pure"]), "judge": _section(cfg, "judge"),
    })


def selection(cfg: HealConfig) -> str:
    return digest({name: getattr(cfg, name).model_dump(mode="json", include=keys) for name, keys in SELECTION.items()})


def training(cfg: HealConfig) -> str:
    """How a (variant, seed) is trained from a run's data: the student and PACE's settings. The (variant, seed)
    list is not in it: adding a variant or a seed leaves the others' models as they are."""
    return digest({"pace": _section(cfg, "pace", {"variants", "seeds"}), "student": _section(cfg, "student")})


def evaluation(cfg: HealConfig) -> str:
    """The evaluation settings that shape a model's results on a set (the sets themselves are keyed by content)."""
    return digest({"evaluation": _section(cfg, "evaluation", {"uri", "benchmarks", "max_problems",
                                                              "bootstrap_resamples", "confidence"}),
                   "max_new_tokens": cfg.teacher.sampling.max_new_tokens, "top_k": cfg.teacher.sampling.top_k,
                   "seed": cfg.teacher.sampling.seed, "prompt_template": cfg.teacher.prompt_template})
