"""MirroredStrategy on 2 logical CPU devices gives the single-device result, for every
registered method: the method contract's distributed check (`kerassl.testing.method_contract`).

The CPU can only be split before TensorFlow initialises its devices, so one fresh
interpreter trains every method of `kerassl.methods.METHODS` twice from identical weights
on identical views (augmentation preset "none") — on one device, and under MirroredStrategy
with 2 replicas of 4 images and synchronised BatchNorm — with the tiny constructor
arguments `CONTRACT_KWARGS` of the method's own test file, `tests/test_<name>.py`.
"""

from __future__ import annotations

import importlib

import pytest

from kerassl.methods import METHODS
from kerassl.testing import method_contract


def contract_kwargs(name: str) -> dict:
    """`CONTRACT_KWARGS` of `tests/test_<name>.py` (tests/ is on sys.path under pytest)."""
    return importlib.import_module(f"test_{name}").CONTRACT_KWARGS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_runs_the_method_contract(name):
    # A new method cannot be forgotten: it needs tests/test_<name>.py calling the contract
    # on the registered class, with the tiny arguments the distributed check uses below.
    module = importlib.import_module(f"test_{name}")
    assert isinstance(module.CONTRACT_KWARGS, dict)
    assert module.run_method_contract is method_contract.run_method_contract
    assert METHODS[name].load() in vars(module).values()


@pytest.fixture(scope="module")
def results() -> dict:
    return method_contract.run_distributed({name: contract_kwargs(name) for name in METHODS})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_replicas_match_one_device(results, name):
    method_contract.check_distributed(results[name])
