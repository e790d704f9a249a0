"""The program each launched training process runs: ``python -m heal_core.stage_process SPEC``.

``accelerate launch`` starts it once per process (``heal_core/launch.py``); each reads the stage's spec and its
examples (memory-mapped Arrow, written once by the caller) and trains its share through ``heal_core.train.fit``,
where TRL's trainer joins the process group the launcher set up.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(spec_file: str) -> None:
    from datasets import load_from_disk

    from heal_core.train import fit, read_spec

    spec, data = read_spec(Path(spec_file))
    fit(spec, load_from_disk(data))


if __name__ == "__main__":
    main(sys.argv[1])
