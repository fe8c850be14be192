"""Test settings: a deterministic Hypothesis profile (no deadlines: the first torch call of a test is slow)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dlm", deadline=None, max_examples=int(os.environ.get("DLM_HYPOTHESIS_EXAMPLES", "25")), derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("dlm")
