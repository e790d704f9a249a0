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
* ``curriculum``: the selection and PACE's mode, all the datasets depend on besides the samples: a derived run with
  the parent's trains on the parent's datasets (``Run.assembly``) instead of assembling them again.
* ``evaluation``: how every model is sampled and scored on a set; with the model's identity and the set's content
  it keys the evaluation store (``tasks/evaluation.py``), so the teacher and the student base are evaluated once.

Which settings each fingerprint covers is not listed here: every setting declares its role where it is declared
(``heal_core/config.py``), and each fingerprint hashes the settings of its role (``heal_core/settings.py``, which
also says why an upgrade of heal changes none of them). Execution settings (storage, pools, retries) and those
another key stands for (``shard_size``, ``max_batch_sequences``: rows are seeded by what they are,
``heal_core/seeds.py``; ``teacher.model``: its files' identity) are in no fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from heal_core import storage
from heal_core.config import HealConfig, hashed_settings
from heal_core.settings import Role, digest, flat

__all__ = [
    "curriculum",
    "digest",
    "evaluation",
    "file_digest",
    "generation",
    "model_identity",
    "selection",
    "settings",
    "training",
]


def model_identity(path: str) -> str:
    """What a model reference names: for a local directory, every file's name and the sha256 of its bytes (a
    checkpoint replaced under the same path, even with the same shapes, is another model; the same checkpoint at
    another path is the same model); for a hub name, the name and the commit it resolves to (``hub_revision``), so
    a model updated on the hub under the same name is another model."""
    root = Path(path)
    if not root.is_dir():
        return f"{path}@{hub_revision(path)}"
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    return digest([(str(p.relative_to(root)), file_digest(p)) for p in files])


def hub_revision(name: str) -> str:
    """The commit hash a hub name resolves to: the one in this machine's Hugging Face cache (what a worker that
    downloaded it loads), else the hub's current one (online). ``ValueError`` when neither can be had."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True)).name
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    try:
        sha = HfApi().model_info(name).sha
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot tell which revision of the hub model {name} this is: not in the Hugging Face "
            f"cache and the hub did not answer ({err})"
        ) from None
    if not sha:
        raise ValueError(f"the hub gave no commit for {name}")
    return sha


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


def settings(cfg: HealConfig, role: Role) -> dict[str, object]:
    """The settings ``role``'s fingerprint stands for, nested as the fingerprint hashes them.

    The evaluation fingerprint keeps heal 0.1's layout, so the evaluation stores written before roles keep their
    keys: the settings it borrows from other sections (the teacher's prompt template, and the sampling's seed, top-k
    and token limit) sit under their leaf names beside the ``evaluation`` section.
    """
    tree = hashed_settings(cfg, lambda d: role in d.fingerprints)
    if role != Role.EVALUATION:
        return tree
    borrowed = {
        path.rsplit(".", 1)[-1]: value
        for section, values in tree.items()
        if section != "evaluation"
        for path, value in flat({section: values}).items()
    }
    return {**({"evaluation": tree["evaluation"]} if "evaluation" in tree else {}), **borrowed}


def generation(cfg: HealConfig, teacher_identity: str) -> str:
    """The teacher's identity stands for ``teacher.model`` (``model_identity``: the same files at another path are
    the same teacher)."""
    return digest({**settings(cfg, Role.GENERATION), "teacher_identity": teacher_identity})


def selection(cfg: HealConfig) -> str:
    return digest(settings(cfg, Role.SELECTION))


def training(cfg: HealConfig) -> str:
    """How a (variant, seed) is trained from a run's data: the student and PACE's settings. The (variant, seed)
    list is not in it: adding a variant or a seed leaves the others' models as they are."""
    return digest(settings(cfg, Role.TRAINING))


def curriculum(cfg: HealConfig) -> str:
    """What a run's curriculum is made of, given its samples: the selection (``kept`` as the shards set it, and the
    caps the no-PURE ablation applies again) and PACE's mode (cumulative or incremental stages,
    ``heal_core/pace.py``). A run derived with the same one trains on its parent's datasets (``Run.assembly``)."""
    return digest({**settings(cfg, Role.SELECTION), "pace.mode": cfg.pace.mode})


def evaluation(cfg: HealConfig) -> str:
    """The evaluation settings that shape a model's results on a set (the sets themselves are keyed by content)."""
    return digest(settings(cfg, Role.EVALUATION))
