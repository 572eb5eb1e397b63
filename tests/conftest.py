"""Test-wide settings.

Hypothesis runs under a fixed profile so that CI is deterministic: examples are
derived from each test's name (``derandomize``), nothing is read from or saved
to an example database, and a failure is reported as found rather than shrunk
for minutes. Wide random exploration is the job of ``otaferry bench campaign``;
locally, ``HYPOTHESIS_PROFILE=explore`` runs the same tests with fresh random
examples, shrinking and ten times as many of them.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
