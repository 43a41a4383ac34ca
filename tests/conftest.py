import pathlib
import sys

import pytest
import torch

# tests/ helpers (oracle.py) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


@pytest.fixture(autouse=True)
def _few_threads():
    """One intra-op thread: the tests' tensors are small, and on a busy 2-core machine OpenMP
    threads spinning in every op slow the suite several times over."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
