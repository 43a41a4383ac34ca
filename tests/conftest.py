import pathlib
import sys

import pytest
import torch

# tests/ helpers (oracle.py) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep CPU tests predictable on the 2-core CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)
