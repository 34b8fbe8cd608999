"""tutorial_lib.env: device choice and seeding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tutorial_lib.env as tle


def test_cpu_is_always_available():
    assert tle.get_device("cpu") == torch.device("cpu")
    assert tle.get_device("auto").type in ("cpu", "cuda", "mps")


def test_missing_gpu_falls_back_to_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="no CUDA GPU"):
        assert tle.get_device("cuda") == torch.device("cpu")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        tle.get_device("tpu")


def test_seed_everything_makes_runs_repeatable():
    tle.seed_everything(3)
    a = (np.random.rand(3), torch.rand(3))
    tle.seed_everything(3)
    b = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_seeded_dataloader_shuffles_the_same_way():
    data = list(range(20))

    def order(seed):
        loader = torch.utils.data.DataLoader(data, batch_size=20, shuffle=True, generator=tle.make_generator(seed),
                                             worker_init_fn=tle.seed_worker)
        return next(iter(loader)).tolist()

    assert order(1) == order(1) and order(1) != order(2)


def test_environment_report_names_the_versions():
    report = tle.environment_report(torch.device("cpu"))
    from importlib import metadata

    assert report["device"] == "cpu" and report["torch"] == metadata.version("torch")
    assert report["tutorial_lib"] != "not installed"
