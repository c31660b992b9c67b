"""Shared fixtures."""

import pytest
import torch

pytest_plugins = ["pytester"]    # test_testing_tools.py runs the taylorseer pytest plugin in a pytest of its own


@pytest.fixture
def one_thread_fresh_dynamo():
    """One torch thread (steady on the 2-core CI machine) and a fresh dynamo cache before and after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)
