import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's many tiny forwards on one intra-op thread.

    On a small CI machine that is also running other work, torch's thread pool spins against the other
    load and a [1024, 64] matmul can take ~100x longer with 2 threads than with 1; these models are far
    too small to gain anything from intra-op parallelism.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
