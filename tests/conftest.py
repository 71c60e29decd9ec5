"""Test-wide settings.

Hypothesis: no per-example deadline (a 2-core CI machine under load makes wall-clock limits
flaky, and speed is measured by benchmarks/, not tests). Under CI (``CI=true``) examples are
derandomized so that a run is reproducible; locally they are random to keep exploring.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")
