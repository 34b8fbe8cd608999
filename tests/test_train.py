"""tutorial_lib.train: cutting networks, caching, the training loop, resuming, ordinal thresholds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import tutorial_lib.loop as tlloop
import tutorial_lib.grades as tlg
import tutorial_lib.profiles as tlprof
import tutorial_lib.env as tle
import tutorial_lib.frozen as tlfr
import tutorial_lib.checkpoint as tck
from tutorial_lib import _io
import tutorial_lib.models as tlm
import tutorial_lib.train as tlt
from tutorial_lib.data import ImageSplit


@pytest.fixture(scope="module")
def lite0():
    return tlm.load_backbone("efficientnet_lite0", num_classes=3)


@pytest.fixture(scope="module")
def tiny_googlenet():
    from torchvision.models import googlenet

    torch.manual_seed(0)
    model = googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=3, transform_input=True)
    return tlm.Backbone("torchvision_googlenet", model, {}, 1024, list(tlm.TORCHVISION_GOOGLENET_STAGES), "fc", "random")


@pytest.mark.parametrize("fixture,cut", [("lite0", "blocks.6"), ("lite0", "blocks.3"), ("tiny_googlenet", "inception5a"),
                                         ("tiny_googlenet", "inception4e")])
def test_trunk_then_top_equals_the_whole_network(request, fixture, cut):
    backbone = request.getfixturevalue(fixture)
    backbone.model.eval()
    x = torch.randn(2, 3, 96, 96)
    trunk, top = tlfr.split_model(backbone, cut)
    top.eval()
    with torch.no_grad():
        assert torch.allclose(top(trunk(x)), backbone.model(x), atol=1e-4)
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in top.parameters())
    for p in backbone.model.parameters():  # leave the fixture as it was
        p.requires_grad_(True)


def test_unknown_cut_is_named(lite0):
    with pytest.raises(ValueError, match="'blocks.99' is not a stage"):
        tlfr.split_model(lite0, "blocks.99")


def test_top_stages(lite0):
    assert tlfr.cut_before_last(lite0, 1) == "conv_head" and tlfr.cut_before_last(lite0, 2) == "blocks.6"
    with pytest.raises(ValueError):
        tlfr.cut_before_last(lite0, 99)


def test_cached_array_hits_and_misses(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(4.0)

    a = _io.cached_array(_io.cache_file(tmp_path, {"k": 1}), compute)
    b = _io.cached_array(_io.cache_file(tmp_path, {"k": 1}), compute)
    c = _io.cached_array(_io.cache_file(tmp_path, {"k": 2}), compute)
    assert np.array_equal(a, b) and np.array_equal(a, c) and len(calls) == 2
    for entry in tmp_path.glob("*.npy"):  # damaged entries are recomputed, never trusted
        entry.write_bytes(b"garbage")
    assert np.array_equal(_io.cached_array(_io.cache_file(tmp_path, {"k": 1}), compute), a) and len(calls) == 3
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_fingerprint_follows_the_data():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    a = _io.fingerprint(images, np.array([0, 1, 0, 1]))
    b = _io.fingerprint(images, np.array([0, 1, 1, 1]))
    images2 = images.copy()
    images2[0, 0, 0, 0] = 1
    c = _io.fingerprint(images2, np.array([0, 1, 0, 1]))
    assert len({a, b, c}) == 3


def _toy_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return TensorDataset(torch.from_numpy(x[:90]), torch.from_numpy(y[:90])), \
        TensorDataset(torch.from_numpy(x[90:]), torch.from_numpy(y[90:]))


def _toy_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))


def test_fit_learns_and_returns_a_history():
    train, val = _toy_problem()
    config = tlt.TrainConfig(epochs=15, batch_size=16, lr_head=1e-2, lr_backbone=1e-2, seed=0)
    history = tlt.fit_classifier(_toy_model(), train, val, config, torch.device("cpu"), head_prefixes=["3"], n_classes=3,
                      train_labels=train.tensors[1].numpy(), progress=False)
    assert list(history["epoch"]) == list(range(1, 16))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_accuracy"].max() > 0.7


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    train, val = _toy_problem()
    config = tlt.TrainConfig(epochs=6, batch_size=16, lr_head=1e-2, lr_backbone=1e-3, seed=3)
    kwargs = dict(head_prefixes=["3"], n_classes=3, train_labels=train.tensors[1].numpy(), progress=False)
    straight = _toy_model()
    h1 = tlt.fit_classifier(straight, train, val, config, torch.device("cpu"), **kwargs)
    ckpt = tmp_path / "run.pt"
    resumed = _toy_model()
    tlt.fit_classifier(resumed, train, val, config, torch.device("cpu"), checkpoint=ckpt, stop_after_epoch=2, **kwargs)
    assert tck.load_checkpoint(ckpt)["epoch"] == 1  # epochs 1 and 2 done (0-based 1)
    resumed = _toy_model()  # a fresh process would start from scratch weights, then load the checkpoint
    h2 = tlt.fit_classifier(resumed, train, val, config, torch.device("cpu"), checkpoint=ckpt, **kwargs)
    assert np.allclose(h1["train_loss"], h2["train_loss"]) and np.allclose(h1["val_accuracy"], h2["val_accuracy"])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_bfloat16_training_on_the_cpu_learns_resumes_exactly_and_differs_from_float32(tmp_path):
    """bfloat16 on a CPU means bfloat16 autocast (used for the top where the CPU computes bf16 natively): it must
    really run in bf16, still learn, and resume from a checkpoint to the same weights."""
    with tle.autocast(torch.device("cpu"), "bfloat16"):
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    with tle.autocast(torch.device("cpu"), "float16"):  # float16 autocast is a GPU feature: plain float32
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32
    train, val = _toy_problem()
    kwargs = dict(head_prefixes=["3"], n_classes=3, train_labels=train.tensors[1].numpy(), progress=False)
    histories, models = {}, {}
    for amp in (False, True):
        config = tlt.TrainConfig(epochs=15, batch_size=16, lr_head=1e-2, lr_backbone=1e-2, seed=0,
                                 precision="bfloat16" if amp else "float32")
        models[amp] = _toy_model()
        histories[amp] = tlt.fit_classifier(models[amp], train, val, config, torch.device("cpu"), **kwargs)
    assert not np.allclose(histories[True]["train_loss"], histories[False]["train_loss"])  # bf16 really used
    assert histories[True]["val_accuracy"].max() > 0.7
    assert all(p.dtype == torch.float32 for p in models[True].parameters())  # weights stay float32
    ckpt = tmp_path / "bf16.pt"
    tlt.fit_classifier(_toy_model(), train, val, config, torch.device("cpu"), checkpoint=ckpt, stop_after_epoch=2, **kwargs)
    resumed = _toy_model()
    again = tlt.fit_classifier(resumed, train, val, config, torch.device("cpu"), checkpoint=ckpt, **kwargs)
    assert np.allclose(again["train_loss"], histories[True]["train_loss"])
    for a, b in zip(models[True].state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    train, val = _toy_problem()
    kwargs = dict(head_prefixes=["3"], n_classes=3, train_labels=train.tensors[1].numpy(), progress=False)
    ckpt = tmp_path / "run.pt"
    tlt.fit_classifier(_toy_model(), train, val, tlt.TrainConfig(epochs=2, batch_size=16, seed=0), torch.device("cpu"),
            checkpoint=ckpt, **kwargs)
    with pytest.warns(UserWarning, match=r"another run: epochs=2 \(now 3\), seed=0 \(now 1\).*kept as .*run\.pt\.bak"):
        history = tlt.fit_classifier(_toy_model(), train, val, tlt.TrainConfig(epochs=3, batch_size=16, seed=1),
                          torch.device("cpu"), checkpoint=ckpt, **kwargs)
    assert list(history["epoch"]) == [1, 2, 3] and tck.load_checkpoint(tmp_path / "run.pt.bak")["epoch"] == 1


def test_discriminative_learning_rates():
    model = _toy_model()
    groups = tlloop.param_groups(model, ["3"], lr_head=1e-2, lr_backbone=1e-4, weight_decay=0.1)
    by_lr = {}
    for g in groups:
        by_lr.setdefault(g["lr"], 0)
        by_lr[g["lr"]] += sum(p.numel() for p in g["params"])
    assert by_lr == {1e-2: 16 * 3 + 3, 1e-4: 6 * 16 + 16}
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim == 1 for p in g["params"]))


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = tlloop.warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0 and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_class_weights_balance_the_classes():
    w = tlt.class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_thresholds_improve_kappa_on_a_shifted_score():
    from tutorial_lib.metrics import quadratic_weighted_kappa

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    scores = 0.6 * y + 0.3 + rng.normal(0, 0.3, 500)  # compressed and shifted: rounding is wrong
    naive = quadratic_weighted_kappa(y, np.clip(np.rint(scores), 0, 4).astype(int))
    thresholds = tlg.fit_thresholds(scores, y, 5)
    tuned = quadratic_weighted_kappa(y, tlg.apply_thresholds(scores, thresholds))
    assert tuned > naive + 0.05 and np.all(np.diff(thresholds) > 0)


def test_profiles():
    assert tlprof.get_profile("auto", torch.device("cpu")).name == "default"
    assert tlprof.get_profile("full", torch.device("cpu")).precision == "float32"
    with pytest.raises(ValueError, match="Unknown PROFILE"):
        tlprof.get_profile("turbo", torch.device("cpu"))


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert tle.resolve_precision("float32", cpu) == "float32"
    monkeypatch.setattr(tle, "native_bfloat16", lambda device: True)
    assert tle.resolve_precision("auto", cpu) == "bfloat16"
    monkeypatch.setattr(tle, "native_bfloat16", lambda device: False)
    assert tle.resolve_precision("auto", cpu) == "float32"
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        tle.resolve_precision("fp8", cpu)


def test_bfloat16_activations_stay_close_to_float32_and_are_cached_apart(lite0, clothing, tmp_path):
    """The bf16 trunk (used by default where the CPU computes bf16) must give nearly the float32 activations,
    and the two precisions must never be served from each other's cache entries."""
    from tutorial_lib.models import make_transform

    split = clothing.test.subset(np.arange(6))
    tf = make_transform(lite0, input_size=(3, 96, 96))
    lite0.model.eval()
    acts = {}
    for precision in ("float32", "bfloat16"):
        frozen = tlfr.FrozenTrunk(lite0, "conv_head", tf, torch.device("cpu"), cache_dir=tmp_path, batch_size=4,
                                 precision=precision)
        assert frozen.precision == precision
        acts[precision] = frozen.activations(split).astype(np.float32)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    a, b = acts["float32"], acts["bfloat16"]
    assert a.shape == b.shape == (6, 320, 3, 3)
    assert not np.array_equal(a, b)  # bf16 was really used
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert rel < 0.05, rel
    # per image, the bf16 activations point the same way as the float32 ones
    cos = (a * b).reshape(6, -1).sum(1) / (np.linalg.norm(a.reshape(6, -1), axis=1) * np.linalg.norm(b.reshape(6, -1), axis=1))
    assert cos.min() > 0.995, cos
    for p in lite0.model.parameters():
        p.requires_grad_(True)


def test_activations_are_computed_once_and_shared_in_memory(lite0, clothing, monkeypatch):
    """A second call for the same images and view returns the same array (no second copy in memory, no second pass),
    with or without a cache folder; another view or other images are computed afresh."""
    from tutorial_lib.models import make_transform

    passes = []
    real = tlfr.compute_activations
    monkeypatch.setattr(tlfr, "compute_activations", lambda *a, **k: passes.append(1) or real(*a, **k))
    frozen = tlfr.FrozenTrunk(lite0, "conv_head", make_transform(lite0, input_size=(3, 64, 64)), torch.device("cpu"),
                              batch_size=4, precision="float32")
    split = clothing.test.subset(np.arange(4))
    first = frozen.activations(split)
    assert frozen.activations(split) is first and len(passes) == 1
    assert frozen.activations(split, "hflip") is not first and len(passes) == 2
    assert frozen.activations(clothing.test.subset(np.arange(1, 5))).shape == first.shape and len(passes) == 3


@pytest.mark.parametrize("fixture,cut", [("lite0", "blocks.6"), ("tiny_googlenet", "inception4e")])
def test_frozen_trunk_folds_batch_norms_without_touching_the_backbone(request, fixture, cut):
    backbone = request.getfixturevalue(fixture)
    backbone.model.eval()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in tlfr.split_model(backbone, cut)[0].modules())
    frozen = tlfr.FrozenTrunk(backbone, cut, None, torch.device("cpu"), precision="float32")
    assert n_bn > 10 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.trunk.modules())
    x = torch.randn(2, 3, 96, 96)
    trunk, _ = tlfr.split_model(backbone, cut)
    with torch.no_grad():
        expected = trunk.eval()(x)
        assert torch.allclose(frozen.trunk(x), expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone still has its batch norms
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.model.modules())
    for p in backbone.model.parameters():
        p.requires_grad_(True)


def test_a_fold_that_changes_the_output_is_refused():
    class RunsBackwards(torch.nn.Module):  # children registered in an order other than the one they run in
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0)

        def forward(self, x):
            return self.conv(self.bn(x))

    module = torch.nn.Sequential(RunsBackwards()).eval()
    assert tlfr.folded_copy(module) is module


def _small_splits(data, *, n_train: int, n_eval: int) -> dict:
    """Seeded random subsets of ``data``'s train, val and test splits, for training tests that must stay fast."""
    pick = np.random.default_rng(0)
    return {name: split.subset(np.sort(pick.choice(len(split), n, replace=False)))
            for name, split, n in (("train", data.train, n_train), ("val", data.val, n_eval), ("test", data.test, n_eval))}


def test_a_cut_before_the_first_stage_trains_everything(clothing):
    """TOP_STAGES = every stage (end-to-end on cached inputs): the trunk is empty, its "activations" are the
    preprocessed images, and the top is the whole network."""
    from tutorial_lib.models import make_transform

    backbone = tlm.load_backbone("efficientnet_lite0", num_classes=10)
    first = tlfr.cut_before_last(backbone, len(backbone.stages))
    assert first == backbone.stages[0]
    tf = make_transform(backbone, input_size=(3, 64, 64))
    frozen = tlfr.FrozenTrunk(backbone, first, tf, torch.device("cpu"), batch_size=4, precision="float32")
    split = clothing.test.subset(np.arange(3))
    acts = frozen.activations(split)
    images = torch.stack([tf(split.image(i)) for i in range(len(split))]).numpy()
    np.testing.assert_allclose(acts, images.astype(np.float16), rtol=0, atol=0)
    _, top = tlfr.split_model(backbone, first)
    assert sum(p.numel() for p in top.parameters()) == sum(p.numel() for p in backbone.model.parameters())


@pytest.mark.parametrize("network", ["efficientnet_lite0", "googlenet with auxiliary heads",
                                     "torchvision googlenet with auxiliary heads"])
def test_finetune_full_runs_with_the_full_profiles_settings(clothing, network, tmp_path):
    """The GPU profile's options on the CPU (mixed precision, channels-last, a capped epoch, a checkpoint, staged
    after finetune_top): the path a CUDA run takes, short of the device. GoogLeNet trains its auxiliary heads too."""
    from torchvision import transforms

    if network == "efficientnet_lite0":
        backbone = tlm.load_backbone("efficientnet_lite0", num_classes=10)
    elif network == "googlenet with auxiliary heads":  # Google's reference network: no batch norm, LRN
        backbone = tlm.load_backbone("googlenet", num_classes=10, aux_logits=True)
    else:
        from torchvision.models import googlenet

        torch.manual_seed(0)
        model = googlenet(weights=None, aux_logits=True, init_weights=True, num_classes=10, transform_input=True)
        backbone = tlm.Backbone("torchvision_googlenet", model, {}, 1024, list(tlm.TORCHVISION_GOOGLENET_STAGES), "fc", "random",
                                extra_heads=["aux1", "aux2"])
    tf = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
    splits = _small_splits(clothing, n_train=12, n_eval=6)
    full = tlprof.PROFILES["full"]
    assert full.precision != "float32" and full.channels_last and full.full_epochs > 0  # the settings this test stands in for
    config = tlt.TrainConfig(epochs=1, batch_size=4, lr_head=1e-3, lr_backbone=1e-4, samples_per_epoch=8,
                             precision=full.precision, channels_last=full.channels_last, seed=0)
    before = {k: v.detach().clone() for k, v in backbone.model.named_parameters()}  # weights, not BN statistics
    result = tlt.finetune_full(backbone, splits, tf, tf, torch.device("cpu"), config, n_classes=10,
                               checkpoint=tmp_path / "full.pt", progress=False)
    assert set(result.probs) == {"val", "test"} and result.probs["test"].shape == (6, 10)
    assert np.allclose(result.probs["test"].sum(1), 1, atol=1e-3) and np.isfinite(result.probs["val"]).all()
    assert result.notes["images_seen"] == 8 and (tmp_path / "full.pt").exists()
    after = dict(backbone.model.named_parameters())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    for module in (backbone.head, *backbone.extra_heads, backbone.stages[1]):  # the heads and the early layers learn
        assert any(k.startswith(f"{module}.") for k in changed), module


def test_seed_ensemble_members_start_alike_average_and_leave_the_first_member(clothing, tmp_path):
    """Each member trains from the same start (not from the previous member), the ensemble is the mean of the
    members, and the backbone ends with the first member's weights."""
    from tutorial_lib.models import make_transform

    def run(seeds, checkpoint=None):
        backbone = tlm.load_backbone("efficientnet_lite0", num_classes=10)
        tf = make_transform(backbone, input_size=(3, 64, 64))
        frozen = tlfr.FrozenTrunk(backbone, "conv_head", tf, torch.device("cpu"), cache_dir=tmp_path / "cache",
                                 batch_size=16, precision="float32")
        config = tlt.TrainConfig(epochs=1, batch_size=8, lr_head=1e-2, lr_backbone=1e-3)
        ensemble, members = tlt.finetune_top_ensemble(frozen, splits, config, n_classes=10, seeds=seeds,
                                                      checkpoint=checkpoint, progress=False)
        _, top = tlfr.split_model(backbone, "conv_head")
        return ensemble, members, {k: v.clone() for k, v in top.state_dict().items()}

    splits = _small_splits(clothing, n_train=24, n_eval=8)
    ensemble, members, weights = run([3, 4], checkpoint=tmp_path / "top.pt")
    assert [m.notes["seed"] for m in members] == [3, 4] and ensemble.notes["seeds"] == [3, 4]
    for split in ("val", "test"):
        assert np.allclose(ensemble.probs[split], (members[0].probs[split] + members[1].probs[split]) / 2)
        assert not np.allclose(members[0].probs[split], members[1].probs[split])  # the seeds differ
    assert sorted(p.name for p in tmp_path.glob("top_seed*.pt")) == ["top_seed3.pt", "top_seed4.pt"]
    alone, alone_members, _ = run([4])  # seed 4 on its own: the same member as seed 4 after seed 3
    assert np.allclose(alone_members[0].probs["test"], members[1].probs["test"], atol=1e-6)
    first, _, first_weights = run([3])  # the backbone is left with the first member's weights
    assert all(torch.equal(weights[k], first_weights[k]) for k in weights)
    assert members[0].model is not None and members[1].model is None
    with pytest.raises(ValueError, match="seeds is empty"):
        run([])


# --------------------------------------------------------------------------- threshold fitting is total

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


def _kappa_or_minus_inf(y, grades):
    import warnings

    from tutorial_lib.metrics import quadratic_weighted_kappa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = quadratic_weighted_kappa(y, grades)
    return kappa if np.isfinite(kappa) else -np.inf


@st.composite
def _scores_and_labels(draw):
    n_classes = draw(st.integers(1, 6))
    n = draw(st.integers(0, 60))
    pool = draw(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8))  # ties, extremes
    scores = draw(arrays(np.float64, n, elements=st.sampled_from(pool)))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, n_classes - 1)))  # classes may be absent
    return scores, labels, n_classes


@settings(max_examples=150, deadline=None)
@given(_scores_and_labels())
def test_fit_thresholds_is_total(case):
    scores, y, n_classes = case
    thresholds = tlg.fit_thresholds(scores, y, n_classes)
    assert thresholds.shape == (max(n_classes - 1, 0),)
    assert np.all(np.isfinite(thresholds)) and np.all(np.diff(thresholds) > 0)
    grades = tlg.apply_thresholds(scores, thresholds)  # np.digitize raised on unordered cut points
    midpoints = np.arange(max(n_classes - 1, 0)) + 0.5
    if len(y):
        assert _kappa_or_minus_inf(y, grades) >= _kappa_or_minus_inf(y, tlg.apply_thresholds(scores, midpoints))


@pytest.mark.parametrize("scores", [np.linspace(3.2, 3.4, 60), np.full(60, 2.0)], ids=["narrow", "constant"])
def test_fit_thresholds_on_scores_inside_one_grade(scores):
    """Regression: every expected grade between two midpoints made the search cross its neighbours
    (ValueError: bins must be monotonically increasing or decreasing, in np.digitize)."""
    y = np.random.default_rng(0).integers(0, 5, len(scores))
    rules, thresholds = tlg.ordinal_predictions(
        {"val": np.full((len(y), 5), 0.2)}, {"val": y})  # uniform probabilities: expected grade 2 for all
    assert np.all(np.diff(thresholds) > 0) and rules["thresholds"]["val"].shape == y.shape
    thresholds = tlg.fit_thresholds(scores, y, 5)
    assert np.all(np.diff(thresholds) > 0)
    assert tlg.apply_thresholds(scores, thresholds).shape == y.shape


def test_other_data_of_the_same_size_and_label_sum_is_not_resumed(tmp_path):
    """Resuming needs the same data *content*: the old rule (sizes and the sum of the labels) resumed this."""
    train, val = _toy_problem()
    kwargs = dict(head_prefixes=["3"], n_classes=3, train_labels=train.tensors[1].numpy(), progress=False)
    config = tlt.TrainConfig(epochs=2, batch_size=16, seed=0)
    ckpt = tmp_path / "run.pt"
    tlt.fit_classifier(_toy_model(), train, val, config, torch.device("cpu"), checkpoint=ckpt, **kwargs)
    shifted = torch.utils.data.TensorDataset(train.tensors[0] + 1.0, train.tensors[1])  # same size, same labels
    with pytest.warns(UserWarning, match=r"another run: data=.*kept as .*run\.pt\.bak"):
        history = tlt.fit_classifier(_toy_model(), shifted, val, config, torch.device("cpu"), checkpoint=ckpt, **kwargs)
    assert list(history["epoch"]) == [1, 2]


def test_fingerprint_of_files_by_content_or_by_stat(tmp_path):
    """Caches key image files by their bytes (a moved copy hits); runs and preparations by path, size, time."""
    import os

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same"), b.write_bytes(b"same")
    assert _io.fingerprint([str(a)]) == _io.fingerprint([str(b)])
    assert _io.fingerprint([str(a)], files="stat") != _io.fingerprint([str(b)], files="stat")
    before = _io.fingerprint([str(a)], files="stat")
    a.write_bytes(b"SAME")
    os.utime(a, ns=(1, 1))
    assert _io.fingerprint([str(a)], files="stat") != before
    assert _io.fingerprint([str(a)]) != _io.fingerprint([str(b)])
