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


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """A tiny folder dataset of real H.264 clips (tests/cluster_util.py), shared by the cluster tests."""
    from cluster_util import write_clips

    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def reference(clips, tmp_path_factory):
    """An uninterrupted run on ``clips`` in this process, without loader workers: what every killed,
    preempted or resumed run of the cluster tests must reproduce bitwise."""
    from cluster_util import train_args
    from dynapp.config import load_config
    from dynapp.engine.run import run_from_config

    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    run_from_config(load_config(None, train_args(clips, out, "data.num_workers=0")))
    return out
