"""A fresh random seed for every test of a module that imports `fresh_seed`, shown in the failure report.

`from seeding import fresh_seed  # noqa: F401` in a test module seeds torch's global generator before each of its
tests with a new seed (or RGD_TEST_SEED, to rerun a failure) and prints it; pytest shows a failing test's captured
output, so the seed is in the failure message.
"""
import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = int(os.environ.get("RGD_TEST_SEED") or random.SystemRandom().randrange(2**31))
    torch.manual_seed(seed)
    print(f"torch seed {seed} (rerun with RGD_TEST_SEED={seed})")
    return seed
