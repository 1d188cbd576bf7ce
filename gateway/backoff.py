"""Full-jitter exponential backoff for the gateway's ways out (the cloud relay, the MQTT relay,
the cloud job poll): a delay drawn uniformly below min(cap, first * 2**failures), so hubs that
lost the same server at once do not come back at once."""

from __future__ import annotations

from collections.abc import Callable


def full_jitter(rng: Callable[[], float], failures: int, first_s: float, cap_s: float) -> float:
    return float(rng() * min(cap_s, first_s * 2.0 ** failures))
