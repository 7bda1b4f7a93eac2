"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: on a loaded shared 2-core CPU, OpenMP barriers stall badly.

    Results do not depend on it; tests that need more threads can set them themselves.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
