"""JSON from the cloud (or Cognito) decoded with one kind of failure: ``ValueError``.

``json.loads`` raises RecursionError for deeply nested input (``[`` ten thousand times fits
well inside the 1 MiB cap), which is no ValueError and escaped every typed error."""

from __future__ import annotations

import json


def decode(body: bytes | str) -> object:
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
