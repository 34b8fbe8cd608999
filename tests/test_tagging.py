"""The tag vocabulary, the CNN-LSTM tagger, its decoders and training loop (notebook 05), on tiny models."""
from __future__ import annotations

import math

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tutorial_lib.checkpoint as tck
import tutorial_lib.tagging as tg
from tutorial_lib.metrics import tag_metrics

FIELDS = ["masterCategory", "articleType", "baseColour"]


def catalogue(rows: int = 24, seed: int = 0) -> pd.DataFrame:
    """A small tag table whose fields depend on each other, like the catalogue's."""
    rng = np.random.default_rng(seed)
    kinds = [("Apparel", "Tshirts"), ("Apparel", "Jeans"), ("Footwear", "Sandals"), ("Accessories", "Watches")]
    colours = ["Black", "Blue", "White"]
    table = [{"masterCategory": kinds[i % 4][0], "articleType": kinds[i % 4][1],
              "baseColour": colours[int(rng.integers(3))]} for i in range(rows)]
    return pd.DataFrame(table)


class TinyEncoder(nn.Module):
    """Stands in for a backbone's top: a flat vector -> an embedding, with the ``num_features`` taggers read."""

    def __init__(self, in_features: int = 6, num_features: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, num_features), nn.ReLU())
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def vocab() -> tg.TagVocabulary:
    return tg.TagVocabulary(FIELDS, min_count=2).fit(catalogue())


def tiny_lstm(vocab, *, field_softmax: bool = True, seed: int = 0) -> tg.CNNLSTMTagger:
    torch.manual_seed(seed)
    return tg.CNNLSTMTagger(TinyEncoder(), vocab, embed_dim=8, hidden=16, dropout=0.0, field_softmax=field_softmax)


# --------------------------------------------------------------------------- vocabulary


def test_tag_order_is_coarse_to_fine_then_the_rest():
    assert tg.tag_order(["gender", "colourway", "articleType", "masterCategory"]) == \
        ["masterCategory", "articleType", "gender", "colourway"]


def test_vocabulary_has_special_tokens_min_count_and_contiguous_fields():
    table = catalogue()
    table.loc[0, "baseColour"] = "Mauve"  # seen once: below min_count
    vocab = tg.TagVocabulary(FIELDS, min_count=2).fit(table)
    assert vocab.tokens_[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (tg.PAD_ID, tg.START_ID, tg.END_ID, tg.UNK_ID) == (0, 1, 2, 3)
    assert "baseColour=Mauve" not in vocab.index_ and vocab.rare_["baseColour"] == ["Mauve"]
    assert vocab.values("masterCategory") == ["Accessories", "Apparel", "Footwear"]
    starts = [s.start for s in vocab.field_slices_.values()]
    stops = [s.stop for s in vocab.field_slices_.values()]
    assert starts[0] == 4 and starts[1:] == stops[:-1] and stops[-1] == len(vocab)
    mask = vocab.step_mask()
    assert mask.shape == (len(FIELDS) + 1, len(vocab)) and mask.sum(1).tolist()[-1] == 1 and mask[-1, tg.END_ID]


def test_encode_decode_round_trip(vocab):
    table = catalogue(12, seed=1)
    ids, counts = vocab.encode(table)
    assert ids.shape == (12, len(FIELDS) + 2)
    assert (ids[:, 0] == tg.START_ID).all() and (ids[:, -1] == tg.END_ID).all()
    assert counts == {"blank": 0, "rare": 0, "unseen": 0}
    pd.testing.assert_frame_equal(vocab.decode(ids), table)
    pd.testing.assert_frame_equal(vocab.decode(ids[:, 1:]), table)  # with or without <start>


def test_unseen_rare_and_blank_tags_become_unknown_and_are_counted(vocab):
    table = catalogue(4)
    table.loc[0, "baseColour"] = "Turquoise"  # never seen in training
    table.loc[1, "articleType"] = ""  # blank
    with pytest.warns(UserWarning, match="1 blank .*1 unseen"):
        ids, counts = vocab.encode(table, what="test split")
    assert counts == {"blank": 1, "rare": 0, "unseen": 1}
    assert ids[0, 1 + FIELDS.index("baseColour")] == tg.UNK_ID and ids[1, 1 + FIELDS.index("articleType")] == tg.UNK_ID
    decoded = vocab.decode(ids)
    assert decoded.loc[0, "baseColour"] == "" and decoded.loc[1, "articleType"] == ""
    # a blank true tag is unknown to the metrics: it neither counts as right nor as wrong
    scores = tag_metrics(table, decoded.assign(articleType=table["articleType"].replace("", "Jeans")), FIELDS)
    assert scores["field_accuracy"]["articleType"] == 1.0


def test_decode_takes_one_tag_per_field_and_stops_at_end(vocab):
    apparel, footwear = vocab.index_["masterCategory=Apparel"], vocab.index_["masterCategory=Footwear"]
    black = vocab.index_["baseColour=Black"]
    decoded = vocab.decode(np.array([[black, apparel, footwear, tg.END_ID, vocab.index_["articleType=Jeans"]]]))
    assert decoded.iloc[0].tolist() == ["Apparel", "", "Black"]


def test_validation_split_is_seeded_and_stratified():
    table = catalogue(40)
    a_fit, a_val = tg.validation_split(table, 0.25, seed=3)
    b_fit, b_val = tg.validation_split(table, 0.25, seed=3)
    assert a_val.index.tolist() == b_val.index.tolist() and len(a_val) == 10
    assert sorted(a_fit.index.tolist() + a_val.index.tolist()) == list(range(40))
    assert sorted(a_val["articleType"].value_counts().tolist()) == [2, 2, 3, 3]  # 10 of each type, 25 % held out


# --------------------------------------------------------------------------- models and decoding


def test_teacher_forcing_shapes(vocab):
    model = tiny_lstm(vocab)
    ids, _ = vocab.encode(catalogue(5))
    tokens = torch.from_numpy(ids)
    logits = model(torch.randn(5, 6), tokens[:, :-1])
    assert logits.shape == (5, len(FIELDS) + 1, len(vocab))  # predicts tag_1 ... tag_k and <end>
    for field_softmax in (True, False):
        loss, correct = tiny_lstm(vocab, field_softmax=field_softmax).loss(torch.randn(5, 6), tokens, 0.1)
        assert loss.ndim == 0 and torch.isfinite(loss) and correct.shape == (5, len(FIELDS))
    heads = tg.IndependentHeads(TinyEncoder(), vocab, dropout=0.0)
    assert [tuple(h.shape) for h in heads(torch.randn(5, 6))] == [(5, 3), (5, 4), (5, 3)]
    assert heads.predict(torch.randn(5, 6)).shape == (5, len(FIELDS))


def _assert_one_valid_tag_per_field(tokens: torch.Tensor, vocab: tg.TagVocabulary) -> None:
    for step, field in enumerate(vocab.fields):
        s = vocab.field_slices_[field]
        assert ((tokens[:, step] >= s.start) & (tokens[:, step] < s.stop)).all(), field
    assert (tokens[:, len(vocab.fields)] == tg.END_ID).all()


@pytest.mark.parametrize("field_softmax", [True, False])
def test_constrained_greedy_and_beam_write_one_valid_tag_per_field(vocab, field_softmax):
    model = tiny_lstm(vocab, field_softmax=field_softmax, seed=1).eval()
    acts = torch.randn(7, 6)
    _assert_one_valid_tag_per_field(tg.greedy_decode(model, acts, constrained=True), vocab)
    for beam in (2, 4, 9):  # 9: more beams than values in some fields
        tokens, scores = tg.beam_search(model, acts, beam_size=beam, constrained=True)
        _assert_one_valid_tag_per_field(tokens, vocab)
        assert torch.isfinite(scores).all()
    assert (vocab.decode(tokens.numpy()) != "").all().all()


@pytest.mark.parametrize("constrained", [True, False])
def test_beam_of_one_is_greedy(vocab, constrained):
    model = tiny_lstm(vocab, field_softmax=False, seed=2).eval()
    acts = torch.randn(9, 6)
    greedy = tg.greedy_decode(model, acts, constrained=constrained)
    beam, _ = tg.beam_search(model, acts, beam_size=1, constrained=constrained)
    assert torch.equal(greedy, beam)


@torch.no_grad()
def sequence_log_prob(model: tg.CNNLSTMTagger, acts: torch.Tensor, tokens: torch.Tensor, *,
                      constrained: bool = True) -> torch.Tensor:
    """A test oracle: the decoder's log-probability ``(batch,)`` of given tag sequences (without ``<start>``), scored as the
    decoders score them: each step renormalised over its allowed tokens; ``<pad>`` after ``<end>`` costs nothing."""
    model.eval()
    start = torch.full_like(tokens[:, :1], tg.START_ID)
    logits = model(acts, torch.cat([start, tokens[:, :-1]], dim=1))  # (batch, T, vocab)
    total = torch.zeros(len(tokens), device=tokens.device)
    for step in range(tokens.shape[1]):
        logp = logits[:, step].masked_fill(~tg._allowed(model, step, constrained), -math.inf).log_softmax(1)
        picked = logp.gather(1, tokens[:, step:step + 1])[:, 0]
        total += torch.where(tokens[:, step] == tg.PAD_ID, torch.zeros_like(picked), picked)
    return total


def test_beam_search_finds_sequences_at_least_as_likely_as_greedy(vocab):
    model = tiny_lstm(vocab, seed=3).eval()
    acts = torch.randn(16, 6)
    greedy = tg.greedy_decode(model, acts)
    beam, beam_scores = tg.beam_search(model, acts, beam_size=4)
    greedy_scores = sequence_log_prob(model, acts, greedy)
    assert torch.allclose(sequence_log_prob(model, acts, beam), beam_scores, atol=1e-5)
    assert (beam_scores >= greedy_scores - 1e-5).all()


def test_unconstrained_decoding_stops_at_end_and_pads(vocab):
    model = tiny_lstm(vocab, field_softmax=False, seed=4).eval()
    with torch.no_grad():  # make <end> the most likely first token
        model.out.bias.zero_()
        model.out.bias[tg.END_ID] = 100.0
    tokens = tg.greedy_decode(model, torch.randn(3, 6), constrained=False)
    assert (tokens[:, 0] == tg.END_ID).all() and (tokens[:, 1:] == tg.PAD_ID).all()
    assert (vocab.decode(tokens.numpy()) == "").all().all()  # every field missing: counted as wrong, no crash


def test_top_encoder_is_a_trainable_copy_of_the_backbone_top():
    from tutorial_lib.models import load_backbone

    backbone = load_backbone("efficientnet_lite0", pretrained=False)
    encoder = tg.TopEncoder(backbone, "conv_head")
    before = backbone.model.conv_head.weight.detach().clone()
    out = encoder(torch.randn(2, 320, 5, 5))
    assert out.shape == (2, backbone.num_features)
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    assert torch.equal(backbone.model.conv_head.weight, before)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["lstm", "heads"])
def test_a_tiny_model_overfits_a_tiny_batch(vocab, kind, tmp_path):
    table = catalogue(8, seed=5)
    ids, _ = vocab.encode(table)
    acts = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    torch.manual_seed(0)
    model = tiny_lstm(vocab, seed=0) if kind == "lstm" else tg.IndependentHeads(TinyEncoder(), vocab, dropout=0.0)
    config = tg.TaggerConfig(epochs=30, batch_size=8, lr_head=5e-2, lr_encoder=5e-2, weight_decay=0.0,
                             warmup_epochs=0, label_smoothing=0.0)
    history = tg.fit_tagger(model, (acts, ids), (acts, ids), config, torch.device("cpu"), progress=False)
    assert list(history.columns[:4]) == ["epoch", "train_loss", "train_accuracy", "val_accuracy"]
    assert history["train_loss"].iloc[-1] < 0.1 * history["train_loss"].iloc[0]
    predicted = vocab.decode(tg.predict_tokens(model, acts, torch.device("cpu")))
    pd.testing.assert_frame_equal(predicted, table)


def test_training_resumes_from_its_checkpoint(vocab, tmp_path):
    ids, _ = vocab.encode(catalogue(16))
    acts = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    config = tg.TaggerConfig(epochs=3, batch_size=4, warmup_epochs=0)
    checkpoint = tmp_path / "tagger.pt"
    first = tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), config, torch.device("cpu"),
                          checkpoint=checkpoint, progress=False)
    again = tiny_lstm(vocab, seed=9)
    second = tg.fit_tagger(again, (acts, ids), (acts, ids), config, torch.device("cpu"), checkpoint=checkpoint,
                           progress=False)  # finished run with the same data and settings: nothing to train
    pd.testing.assert_frame_equal(first, second)
    with pytest.warns(UserWarning, match=r"another tagging run.*kept as .*tagger\.pt\.bak"):
        other = tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), tg.TaggerConfig(epochs=1, batch_size=4),
                              torch.device("cpu"), checkpoint=checkpoint, progress=False)
    assert len(other) == 1  # different settings: the old checkpoint is not used, and not destroyed either
    assert tck.load_checkpoint(tmp_path / "tagger.pt.bak")["epoch"] == 2


def test_tagger_precision_is_resolved_used_and_part_of_the_checkpoint(vocab, tmp_path, monkeypatch):
    ids, _ = vocab.encode(catalogue(16))
    acts = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    runs = {}
    for precision in ("float32", "bfloat16"):
        config = tg.TaggerConfig(epochs=2, batch_size=4, warmup_epochs=0, precision=precision)
        runs[precision] = tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), config, torch.device("cpu"),
                                        checkpoint=tmp_path / "tagger.pt", progress=False)
        assert len(runs[precision]) == 2  # the other precision's checkpoint was not resumed
    assert not np.allclose(runs["float32"]["train_loss"], runs["bfloat16"]["train_loss"])
    # "auto" is whichever the hardware computes natively, and resumes that run's checkpoint
    monkeypatch.setattr("tutorial_lib.env.native_bfloat16", lambda device: True)
    auto = tg.fit_tagger(tiny_lstm(vocab, seed=9), (acts, ids), (acts, ids),
                         tg.TaggerConfig(epochs=2, batch_size=4, warmup_epochs=0), torch.device("cpu"),
                         checkpoint=tmp_path / "tagger.pt", progress=False)
    pd.testing.assert_frame_equal(auto, runs["bfloat16"])
    with pytest.raises(ValueError, match="Unknown precision"):
        tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), tg.TaggerConfig(epochs=1, precision="half"),
                      torch.device("cpu"), progress=False)


def test_combination_rates():
    reference = catalogue(8)
    good = reference.copy()
    bad = reference.assign(masterCategory="Footwear")
    rates = tg.combination_rates({"good": good, "bad": bad}, reference,
                                 {"category path": ["masterCategory", "articleType"]})
    assert rates.loc["good", "category path"] == 1.0 and rates.loc["bad", "category path"] == 0.25


def test_tag_grid_draws_tags_under_images():
    from tutorial_lib.plots import tag_grid

    table = catalogue(3)
    predicted = table.assign(baseColour="Black")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = tag_grid([np.zeros((8, 8, 3), dtype=np.uint8)] * 3, table, predicted, FIELDS, ncols=3)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 3 * len(FIELDS) and any(t.startswith("baseColour: Black") for t in texts)


def test_a_catalogue_folder_with_a_missing_image_and_a_blank_tag(tmp_path):
    """DATA_DIR in notebook 05: images/ plus one CSV; bad rows are warned about, counted, and never crash."""
    import shutil

    from tutorial_lib.data import load_tag_dataset

    embedded = load_tag_dataset("fashion").table.iloc[:6]
    (tmp_path / "images").mkdir()
    for path in embedded["path"]:
        shutil.copy(path, tmp_path / "images" / path.name)
    rows = embedded.drop(columns="path").copy()
    rows.loc[rows.index[1], "baseColour"] = ""
    rows = pd.concat([rows, rows.iloc[[0]].assign(id="99999999")])  # listed, but no image
    rows.to_csv(tmp_path / "styles.csv", index=False)
    with pytest.warns(UserWarning, match="no image"):
        catalogue = load_tag_dataset(tmp_path)
    assert len(catalogue) == 6 and catalogue.dropped == {"image missing": 1}
    fields = tg.tag_order(catalogue.fields)
    vocab = tg.TagVocabulary(fields, min_count=1).fit(catalogue.table)
    with pytest.warns(UserWarning, match="1 blank"):
        ids, counts = vocab.encode(catalogue.table)
    assert counts["blank"] == 1 and ids.shape == (6, len(fields) + 2)


def test_a_kaggle_style_catalogue_folder_loads(tmp_path):
    """Kaggle's catalogue layout: styles.csv beside images.csv, and a product name with an unquoted comma (a row
    with one field too many). The tag CSV is found, the bad row is left out, warned about and counted."""
    import shutil

    from tutorial_lib.data import DataError, load_tag_dataset

    embedded = load_tag_dataset("fashion").table.iloc[:4]
    (tmp_path / "images").mkdir()
    for path in embedded["path"]:
        shutil.copy(path, tmp_path / "images" / path.name)
    rows = embedded.drop(columns="path").assign(productDisplayName="Plain Shirt")
    lines = [",".join(rows.columns)] + [",".join(r) for r in rows.astype(str).itertuples(index=False)]
    lines[2] = lines[2].replace("Plain Shirt", "Shirt, Blue")  # unquoted comma: one field too many
    (tmp_path / "styles.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "images.csv").write_text("filename,link\n" + "".join(f"{i}.jpg,http://example.invalid/{i}.jpg\n"
                                                                    for i in rows["id"]))
    with pytest.warns(UserWarning, match="1 row.*more fields than the header"):
        catalogue = load_tag_dataset(tmp_path)
    assert catalogue.dropped == {"unparsable row": 1}
    assert list(catalogue.table["id"]) == [rows["id"].iloc[0], *rows["id"].iloc[2:]]
    assert catalogue.table.drop(columns="path").equals(
        embedded.drop(columns="path").iloc[[0, 2, 3]].reset_index(drop=True)[catalogue.table.columns[1:]])
    shutil.copy(tmp_path / "styles.csv", tmp_path / "styles_copy.csv")  # two tag CSVs: which one is meant?
    with pytest.raises(DataError, match="exactly one CSV"):
        load_tag_dataset(tmp_path)


def test_catalogue_split_keeps_groups_on_one_side():
    """GROUP_PATTERN in notebook 05: here, products whose ids share their first two digits form a group."""
    import tutorial_lib.data as tld
    import tutorial_lib.baselines as tlb
    import tutorial_lib.tagging as tg

    catalogue = tld.load_tag_dataset("fashion")
    train, test, _ = tlb.catalogue_split(catalogue, seed=0, group_pattern=r"^(\d\d)")
    fit, val = tg.validation_split(train, 0.15, seed=0)
    assert len(test) > 0.1 * (len(train) + len(test)) and len(val) > 0
    sides = [set(t["group"]) for t in (fit, val, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    plain_train, plain_test, _ = tlb.catalogue_split(catalogue, seed=0)  # unchanged without a pattern
    assert "group" not in plain_train.columns


@pytest.mark.parametrize("existing", ["backup", "refuse"])
def test_a_damaged_tagger_checkpoint_behaves_as_a_classifiers(vocab, tmp_path, existing):
    """One checkpoint helper for every network: a damaged file is kept aside (or refused), never a crash."""
    ids, _ = vocab.encode(catalogue(16))
    acts = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    checkpoint = tmp_path / "tagger.pt"
    checkpoint.write_bytes(b"PK\3\4 half a zip")
    config = tg.TaggerConfig(epochs=1, batch_size=4)
    if existing == "refuse":
        with pytest.raises(tck.CheckpointError, match=r"tagger\.pt is not a readable checkpoint.*left untouched"):
            tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), config, torch.device("cpu"),
                          checkpoint=checkpoint, progress=False, existing="refuse")
        assert checkpoint.read_bytes() == b"PK\3\4 half a zip"
        return
    with pytest.warns(UserWarning, match=r"tagger\.pt is not a readable checkpoint.*kept as .*tagger\.pt\.bak"):
        history = tg.fit_tagger(tiny_lstm(vocab), (acts, ids), (acts, ids), config, torch.device("cpu"),
                                checkpoint=checkpoint, progress=False)
    assert len(history) == 1 and tck.load_checkpoint(checkpoint)["epoch"] == 0
