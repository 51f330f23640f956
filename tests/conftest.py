"""Shared pytest fixtures: tiny synthetic datasets generated once per session, GPU skipping.

Fixtures that build on each other (raw synthetic files -> prepared dataset -> trained tiny model)
are session-scoped so the whole suite generates, prepares and trains each at most once.
"""

from __future__ import annotations

import os

import pytest

# Keep the 2-core CI machine responsive: each test process uses one intra-op thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing means no GPU either
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
