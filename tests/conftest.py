"""Shared test helpers: where the official parity fixtures live.

Fixtures are found through VISION_AR_FIXTURES (default: ../shared/fixtures from the repository root).
When a family's folder is absent its parity tests skip, unless VISION_AR_REQUIRE_FIXTURES=1 (CI), where
absence is a failure.
"""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    return Path(os.environ.get("VISION_AR_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


def family_fixtures(family: str) -> Path:
    """The fixture folder of one family (var, llamagen, xar, flextok, eval); skip or fail when absent."""
    folder = fixtures_root() / family
    if not folder.is_dir():
        reason = f"parity fixtures for '{family}' not found at {folder} (set VISION_AR_FIXTURES)"
        if os.environ.get("VISION_AR_REQUIRE_FIXTURES") == "1":
            pytest.fail(reason + " and VISION_AR_REQUIRE_FIXTURES=1")
        pytest.skip(reason)
    return folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The fixtures were written with 2 threads; CI has 2 cores. Keep runs comparable and quick.
    # VISION_AR_TEST_THREADS=1 when the machine is shared (2 spinning OpenMP threads per job thrash).
    torch.set_num_threads(int(os.environ.get("VISION_AR_TEST_THREADS", min(2, os.cpu_count() or 1))))
    yield
