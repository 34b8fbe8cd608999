"""Writing an image's tags as a sequence: a CNN encoder and an LSTM decoder.

Introduced in ``05_tagging``. A catalogue photo has one tag per field (gender,
category, article type, colour, ...). Two ways to predict them from the same
fine-tuned CNN features:

- :class:`IndependentHeads`: one softmax head per field, each field on its own;
- :class:`CNNLSTMTagger`: an LSTM that *writes* the tags one field after the other,
  each step seeing the image and the tags it has already written (teacher forcing
  in training; greedy or beam-search decoding, optionally constrained to one valid
  tag per field).

Both train the top of a pretrained backbone jointly with their heads, on cached
activations of the frozen trunk (:class:`tutorial_lib.frozen.FrozenTrunk`): that is
end-to-end fine-tuning of the encoder's top, at a cost a CPU can afford.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ._io import fingerprint
from .checkpoint import RunCheckpoint, run_key
from .env import autocast, make_generator, native_bfloat16, resolve_precision, seed_everything
from .frozen import split_model
from .loop import fit, optimizer_and_schedule
from .models import Backbone

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

COARSE_TO_FINE = ("masterCategory", "subCategory", "articleType", "gender", "usage", "season", "baseColour")
"""The catalogue's fields in decoding order: the category hierarchy from coarse to fine, then the attributes that
depend on the article type, the least certain (season, colour) last so that their errors cannot mislead the
steps that come after them."""


def tag_order(fields: Sequence[str]) -> list[str]:
    """``fields`` in decoding order: those of :data:`COARSE_TO_FINE` first, in that order, then the rest as given."""
    fields = list(fields)
    return [f for f in COARSE_TO_FINE if f in fields] + [f for f in fields if f not in COARSE_TO_FINE]


# --------------------------------------------------------------------------- data: splits and the vocabulary


def validation_split(train: pd.DataFrame, fraction: float = 0.15, seed: int = 0,
                     stratify: str = "articleType") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a seeded validation part out of ``train``, stratified by ``stratify`` where every value allows it.

    Returns ``(fit, val)``. Values with a single image cannot be stratified; then the split is plain random.
    A ``group`` column (from ``catalogue_split(group_pattern=...)``) keeps each group on one side.
    """
    from .data import stratified_split

    labels = train[stratify].to_numpy() if stratify in train.columns else None
    groups = train["group"].to_numpy() if "group" in train.columns else None
    fit, val = stratified_split(np.arange(len(train)), labels, fraction, seed, groups)
    return train.iloc[fit].sort_index(), train.iloc[val].sort_index()


def limit_rows(table: pd.DataFrame, max_rows: int | None, seed: int = 0) -> pd.DataFrame:
    """A seeded random sample of at most ``max_rows`` rows, in the original order (all of them if ``None``)."""
    if max_rows is None or len(table) <= max_rows:
        return table
    return table.sample(max_rows, random_state=seed).sort_index()


class TagVocabulary:
    """Tokens for ``field=value`` tags, plus ``<pad>``, ``<start>``, ``<end>`` and ``<unk>``.

    ``fit`` keeps the values seen at least ``min_count`` times in the training table; the
    rest become ``<unk>``. Each field's tokens are contiguous ids (``field_slices_``), in
    ``fields`` order, which is also the order in which the decoder writes them. ``encode``
    turns a table into ``<start> tag_1 ... tag_k <end>`` rows and counts what it had to map
    to ``<unk>``: blank values, values too rare to keep, and values never seen in training.
    """

    def __init__(self, fields: Sequence[str], min_count: int = 2) -> None:
        self.fields = fields
        self.min_count = min_count

    def fit(self, table: pd.DataFrame) -> "TagVocabulary":
        self.tokens_ = list(SPECIAL_TOKENS)
        self.field_slices_: dict[str, slice] = {}
        self.rare_: dict[str, list[str]] = {}
        self.seen_: dict[str, set[str]] = {}
        for field in self.fields:
            values = table[field].astype(str).str.strip()
            counts = values[values != ""].value_counts()
            kept = sorted(counts.index[counts >= self.min_count])
            self.rare_[field] = sorted(counts.index[counts < self.min_count])
            self.seen_[field] = set(counts.index)
            start = len(self.tokens_)
            self.tokens_ += [f"{field}={v}" for v in kept]
            self.field_slices_[field] = slice(start, len(self.tokens_))
        self.index_ = {token: i for i, token in enumerate(self.tokens_)}
        return self

    def __len__(self) -> int:
        return len(self.tokens_)

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def values(self, field: str) -> list[str]:
        """The values of ``field`` that have a token, in id order."""
        return [t.split("=", 1)[1] for t in self.tokens_[self.field_slices_[field]]]

    def step_mask(self) -> torch.Tensor:
        """``(n_fields + 1, len(self))`` booleans: the tokens valid at each decoding step (the last: ``<end>``)."""
        mask = torch.zeros(self.n_fields + 1, len(self), dtype=torch.bool)
        for step, field in enumerate(self.fields):
            mask[step, self.field_slices_[field]] = True
        mask[self.n_fields, END_ID] = True
        return mask

    def encode(self, table: pd.DataFrame, *, warn: bool = True, what: str = "table") -> tuple[np.ndarray, dict[str, int]]:
        """``(N, n_fields + 2)`` token ids ``<start> tag_1 ... tag_k <end>`` and counts of what became ``<unk>``.

        Counts: ``blank`` (an empty value), ``rare`` (seen in training fewer than ``min_count`` times),
        ``unseen`` (never seen in training, e.g. a new colour at test time). Nothing fails: each case is
        mapped to ``<unk>``, counted, and reported in one warning per call.
        """
        counts = {"blank": 0, "rare": 0, "unseen": 0}
        examples: dict[str, list[str]] = {"blank": [], "rare": [], "unseen": []}
        ids = np.full((len(table), self.n_fields + 2), PAD_ID, dtype=np.int64)
        ids[:, 0], ids[:, -1] = START_ID, END_ID
        for j, field in enumerate(self.fields):
            for i, value in enumerate(table[field].astype(str).str.strip()):
                token = self.index_.get(f"{field}={value}")
                if token is None:
                    kind = "blank" if value == "" else "rare" if value in self.seen_[field] else "unseen"
                    counts[kind] += 1
                    examples[kind].append(field if kind == "blank" else f"{field}={value}")
                    token = UNK_ID
                ids[i, j + 1] = token
        if warn and counts["blank"] + counts["unseen"]:
            parts = [f"{counts[k]} {k} ({', '.join(sorted(set(examples[k]))[:5])})"
                     for k in ("blank", "unseen") if counts[k]]
            warnings.warn(f"{what}: tags mapped to {UNK}: {'; '.join(parts)}. They are left out of the training "
                          "loss; at test time they count as unknown.", stacklevel=2)
        return ids, counts

    def decode(self, ids: np.ndarray) -> pd.DataFrame:
        """Token rows (with or without ``<start>``) to a table with one column per field.

        Each field takes the first token of that field before ``<end>``; a field the row
        never mentions is ``""`` (an unconstrained decoder may skip or repeat a field).
        """
        rows = []
        for row in np.asarray(ids):
            values = {f: "" for f in self.fields}
            for token in row:
                token = int(token)
                if token == END_ID:
                    break
                if token < len(SPECIAL_TOKENS):
                    continue
                field, value = self.tokens_[token].split("=", 1)
                if values[field] == "":
                    values[field] = value
            rows.append(values)
        return pd.DataFrame(rows, columns=list(self.fields))

    def to_frame(self) -> pd.DataFrame:
        """Tokens per field: how many values kept, and which were too rare."""
        return pd.DataFrame({"tokens": {f: s.stop - s.start for f, s in self.field_slices_.items()},
                             f"values seen < {self.min_count} times (-> {UNK})": {f: len(r) for f, r in self.rare_.items()}})


# --------------------------------------------------------------------------- the models


class TopEncoder(nn.Module):
    """The upper stages of a pretrained backbone: cached trunk activations -> image embedding ``(B, num_features)``.

    A copy of the layers from ``cut`` up to (not including) the ImageNet classifier, so two taggers
    built from one backbone each start from the pretrained weights and train their own copy.
    """

    def __init__(self, backbone: Backbone, cut: str) -> None:
        super().__init__()
        _, top = split_model(backbone, cut)
        layers = [copy.deepcopy(m) for m in list(top)[:-1] if not isinstance(m, nn.Dropout)]
        self.body = nn.Sequential(*layers, nn.Flatten(1))
        for p in self.body.parameters():
            p.requires_grad_(True)
        self.num_features = backbone.num_features

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        return self.body(acts)  # (batch, num_features)


class IndependentHeads(nn.Module):
    """One softmax head per field on a shared image embedding: each field predicted on its own."""

    def __init__(self, encoder: nn.Module, vocab: TagVocabulary, *, dropout: float = 0.3) -> None:
        super().__init__()
        self.encoder = encoder
        self.vocab = vocab
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList([nn.Linear(encoder.num_features, s.stop - s.start)
                                    for s in vocab.field_slices_.values()])

    def forward(self, acts: torch.Tensor) -> list[torch.Tensor]:
        z = self.dropout(self.encoder(acts))  # (batch, num_features)
        return [head(z) for head in self.heads]  # n_fields x (batch, n_values_of_field)

    def loss(self, acts: torch.Tensor, tokens: torch.Tensor, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over fields; returns ``(loss, per-field correct (batch, n_fields))``."""
        targets = _field_targets(tokens[:, 1:-1], self.vocab)  # (batch, n_fields), -100 where unknown
        logits = self(acts)
        loss = sum(F.cross_entropy(l, t, ignore_index=-100, label_smoothing=label_smoothing)
                   for l, t in zip(logits, targets.T)) / len(logits)
        correct = torch.stack([l.argmax(1) == t for l, t in zip(logits, targets.T)], dim=1)
        return loss, correct

    @torch.no_grad()
    def predict(self, acts: torch.Tensor, **_: Any) -> torch.Tensor:
        """The most likely value of each field as token ids ``(batch, n_fields)``."""
        offsets = [s.start for s in self.vocab.field_slices_.values()]
        return torch.stack([l.argmax(1) + o for l, o in zip(self(acts), offsets)], dim=1)


class CNNLSTMTagger(nn.Module):
    """A CNN encoder and an LSTM decoder that writes the tags one field after the other.

    The image embedding sets the LSTM's initial state (``h0``, ``c0``) and, projected, is
    also fed at every step beside the embedding of the previous tag, so the decoder never
    "forgets" the image. Step ``t`` predicts field ``t`` (then ``<end>``). With
    ``field_softmax`` the loss at each step is a softmax over that field's values only,
    which is what constrained decoding uses; without it, a softmax over the whole
    vocabulary, as in image captioning.
    """

    def __init__(self, encoder: nn.Module, vocab: TagVocabulary, *, embed_dim: int = 128, hidden: int = 384,
                 dropout: float = 0.3, field_softmax: bool = True, tag_dropout: float = 0.0,
                 deep_output: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.vocab = vocab
        self.field_softmax = field_softmax
        self.tag_dropout = tag_dropout
        self.dropout = nn.Dropout(dropout)
        self.init_h = nn.Linear(encoder.num_features, hidden)
        self.init_c = nn.Linear(encoder.num_features, hidden)
        self.context = nn.Linear(encoder.num_features, embed_dim)
        self.embed = nn.Embedding(len(vocab), embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(2 * embed_dim, hidden, batch_first=True)
        self.deep_output = deep_output
        self.out = nn.Linear(hidden + (embed_dim if deep_output else 0), len(vocab))
        self.register_buffer("step_mask", vocab.step_mask(), persistent=False)

    def start(self, acts: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Encode the images: the LSTM's initial state and the per-step image context."""
        z = self.dropout(self.encoder(acts))  # (batch, num_features)
        state = (torch.tanh(self.init_h(z)).unsqueeze(0), self.init_c(z).unsqueeze(0))  # 2 x (1, batch, hidden)
        return state, torch.relu(self.context(z))  # context: (batch, embed_dim)

    def steps(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], context: torch.Tensor
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits for the next token after each of ``tokens`` ``(batch, T)``: ``(batch, T, vocab)`` and the new state."""
        context = context.unsqueeze(1).expand(-1, tokens.shape[1], -1)  # (batch, T, embed)
        x = torch.cat([self.embed(tokens), context], dim=2)  # (batch, T, 2 * embed)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not native_bfloat16(x.device):
            # oneDNN has no bfloat16 LSTM on CPUs without native bfloat16: that one layer runs in float32
            with torch.autocast("cpu", enabled=False):
                h, state = self.lstm(x.float(), tuple(s.float() for s in state))  # h: (batch, T, hidden)
        else:
            h, state = self.lstm(x, state)  # h: (batch, T, hidden)
        if self.deep_output:  # the output layer sees the image too, not only through the LSTM's state
            h = torch.cat([h, context], dim=2)  # (batch, T, hidden + embed)
        return self.out(self.dropout(h)), state  # (batch, T, vocab)

    def forward(self, acts: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits ``(batch, T, vocab)`` for the next token after each of ``tokens_in``.

        In training, ``tag_dropout`` hides a random share of the previous tags (replaced by ``<unk>``), so the
        decoder cannot lean on them alone: at test time they are its own, sometimes wrong, guesses.
        """
        if self.training and self.tag_dropout > 0:
            hide = torch.rand(tokens_in.shape, device=tokens_in.device) < self.tag_dropout
            hide[:, 0] = False  # <start> stays
            tokens_in = tokens_in.masked_fill(hide, UNK_ID)
        state, context = self.start(acts)
        logits, _ = self.steps(tokens_in, state, context)
        return logits

    def loss(self, acts: torch.Tensor, tokens: torch.Tensor, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every next tag given the true previous ones; returns ``(loss, correct (batch, n_fields))``."""
        logits = self(acts, tokens[:, :-1])  # (batch, n_fields + 1, vocab): predicts tag_1 ... tag_k, <end>
        targets = tokens[:, 1:]  # (batch, n_fields + 1)
        k = self.vocab.n_fields
        if self.field_softmax:
            field_targets = _field_targets(targets[:, :k], self.vocab)
            slices = list(self.vocab.field_slices_.values())
            loss = sum(F.cross_entropy(logits[:, t, s], field_targets[:, t], ignore_index=-100,
                                          label_smoothing=label_smoothing) for t, s in enumerate(slices)) / k
            correct = torch.stack([logits[:, t, s].argmax(1) == field_targets[:, t] for t, s in enumerate(slices)], 1)
            return loss, correct
        targets = targets.masked_fill(targets == UNK_ID, -100)  # unknown tags teach nothing
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                  label_smoothing=label_smoothing)
        return loss, logits[:, :k].argmax(2) == targets[:, :k]

    @torch.no_grad()
    def predict(self, acts: torch.Tensor, *, beam_size: int = 1, constrained: bool = True) -> torch.Tensor:
        """Generated tag tokens ``(batch, n_fields + 1)`` (greedy when ``beam_size == 1``)."""
        if beam_size == 1:
            return greedy_decode(self, acts, constrained=constrained)
        return beam_search(self, acts, beam_size=beam_size, constrained=constrained)[0]


def _field_targets(tags: torch.Tensor, vocab: TagVocabulary) -> torch.Tensor:
    """Token ids ``(batch, n_fields)`` -> index within each field's values; ``-100`` (ignored) for ``<unk>``."""
    starts = torch.tensor([s.start for s in vocab.field_slices_.values()], device=tags.device)
    return torch.where(tags == UNK_ID, torch.full_like(tags, -100), tags - starts)


# --------------------------------------------------------------------------- decoding


def _allowed(model: CNNLSTMTagger, step: int, constrained: bool) -> torch.Tensor:
    """Tokens the decoder may write at ``step``: that field's values (constrained), or any tag and ``<end>``."""
    if constrained:
        return model.step_mask[min(step, model.vocab.n_fields)]
    allowed = torch.ones(len(model.vocab), dtype=torch.bool, device=model.step_mask.device)
    allowed[[PAD_ID, START_ID, UNK_ID]] = False
    return allowed


@torch.no_grad()
def greedy_decode(model: CNNLSTMTagger, acts: torch.Tensor, *, constrained: bool = True) -> torch.Tensor:
    """Write each image's tags by taking the most likely next token at every step.

    Returns ``(batch, n_fields + 1)`` token ids; an unconstrained row that ends early is padded with ``<pad>``.
    """
    model.eval()
    state, context = model.start(acts)
    batch, length = acts.shape[0], model.vocab.n_fields + 1
    token = torch.full((batch, 1), START_ID, dtype=torch.long, device=acts.device)
    out = torch.full((batch, length), PAD_ID, dtype=torch.long, device=acts.device)
    done = torch.zeros(batch, dtype=torch.bool, device=acts.device)
    for step in range(length):
        logits, state = model.steps(token, state, context)  # (batch, 1, vocab)
        logits = logits[:, 0].masked_fill(~_allowed(model, step, constrained), -math.inf)
        token = logits.argmax(1, keepdim=True)  # (batch, 1)
        out[:, step] = torch.where(done, PAD_ID, token[:, 0])
        done |= token[:, 0] == END_ID
        if done.all():
            break
    return out


@torch.no_grad()
def beam_search(model: CNNLSTMTagger, acts: torch.Tensor, *, beam_size: int = 3, constrained: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``beam_size`` most likely partial tag sequences at each step; return the best one per image.

    Scores are sums of log-probabilities, renormalised over the allowed tokens of each step
    (with ``constrained``: one value of the step's field). Returns ``(tokens (batch, n_fields + 1),
    log-probability (batch,))``. With ``beam_size=1`` it is greedy decoding.
    """
    model.eval()
    state, context = model.start(acts)
    batch, k, length, vocab_size = acts.shape[0], beam_size, model.vocab.n_fields + 1, len(model.vocab)
    device = acts.device
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)  # 2 x (1, batch * k, hidden)
    context = context.repeat_interleave(k, dim=0)  # (batch * k, embed_dim)
    scores = torch.full((batch, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # one live hypothesis to start with
    seqs = torch.full((batch, k, 0), PAD_ID, dtype=torch.long, device=device)
    token = torch.full((batch * k, 1), START_ID, dtype=torch.long, device=device)
    done = torch.zeros(batch, k, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device).unsqueeze(1)  # (batch, 1)
    for step in range(length):
        logits, state = model.steps(token, state, context)  # (batch * k, 1, vocab)
        logp = logits[:, 0].masked_fill(~_allowed(model, step, constrained), -math.inf).log_softmax(1)
        logp = logp.view(batch, k, vocab_size)
        finished = torch.full((vocab_size,), -math.inf, device=device)
        finished[PAD_ID] = 0.0  # a finished hypothesis only extends with <pad>, at no cost
        logp = torch.where(done.unsqueeze(2), finished, logp)
        top = (scores.unsqueeze(2) + logp).view(batch, -1).topk(k, dim=1)  # over k * vocab candidates
        beam, token_ids = top.indices // vocab_size, top.indices % vocab_size  # (batch, k)
        scores = top.values
        seqs = torch.cat([seqs[rows, beam], token_ids.unsqueeze(2)], dim=2)  # (batch, k, step + 1)
        done = done[rows, beam] | (token_ids == END_ID)
        flat = (rows * k + beam).view(-1)  # which hypothesis each new one continues
        state = tuple(s[:, flat] for s in state)
        token = token_ids.view(-1, 1)
        if done.all():
            break
    best = scores.argmax(1)
    out = torch.full((batch, length), PAD_ID, dtype=torch.long, device=device)
    out[:, :seqs.shape[2]] = seqs[torch.arange(batch, device=device), best]
    return out, scores[torch.arange(batch, device=device), best]


# --------------------------------------------------------------------------- training


@dataclass
class TaggerConfig:
    """Hyper-parameters of one tagger training run."""

    epochs: int = 10
    batch_size: int = 64
    lr_head: float = 2e-3  # the new heads / decoder
    lr_encoder: float = 5e-4  # the pretrained top stages learn slower
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    precision: str = "auto"  # bfloat16 mixed precision where the hardware has it natively, else float32


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


@torch.no_grad()
def predict_tokens(model: nn.Module, acts: np.ndarray | torch.Tensor, device: torch.device, *,
                   batch_size: int = 256, **decode: Any) -> np.ndarray:
    """Tag tokens for every row of ``acts`` (cached activations), in batches; ``decode`` goes to ``model.predict``."""
    model = model.to(device).eval()
    acts = _tensor(acts)
    return torch.cat([model.predict(acts[i:i + batch_size].to(device).float(), **decode).cpu()
                      for i in range(0, len(acts), batch_size)]).numpy()


def field_accuracy_of_tokens(pred: np.ndarray, tokens: np.ndarray, n_fields: int) -> float:
    """Mean over fields of the share of known tags predicted right (``tokens`` with ``<start>``)."""
    true = tokens[:, 1:n_fields + 1]
    known = true != UNK_ID
    return float(((pred[:, :n_fields] == true) & known).sum() / max(1, known.sum()))


def fit_tagger(model: nn.Module, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
               config: TaggerConfig, device: torch.device, *, checkpoint: Path | None = None,
               progress: bool = True, existing: str = "backup") -> pd.DataFrame:
    """Train a tagger (``IndependentHeads`` or ``CNNLSTMTagger``) on ``(activations, tokens)`` pairs.

    The same loop as the classifiers (:func:`tutorial_lib.loop.fit`) with a tagger's step: the
    encoder's pretrained layers learn at ``lr_encoder``, everything new at ``lr_head`` (warm-up,
    then cosine decay), the forward pass in ``config.precision``. After every epoch the validation
    tags are predicted (greedy, constrained) and the weights of the epoch with the best mean field
    accuracy are kept. Returns the history: ``epoch``, ``train_loss``, ``train_accuracy``
    (teacher-forced tag accuracy), ``val_accuracy``, ``val_score`` (the same), ``lr``, ``seconds``.
    ``checkpoint`` and ``existing`` behave as in :func:`tutorial_lib.train.fit_classifier`.
    """
    seed_everything(config.seed)
    config = replace(config, precision=resolve_precision(config.precision, device))  # the resolved one is kept
    model = model.to(device)
    train_x, train_tokens = _tensor(train[0]), _tensor(train[1])
    heads = [name for name, _ in model.named_children() if name != "encoder"]
    optimizer, scheduler = optimizer_and_schedule(
        model, heads, lr_head=config.lr_head, lr_backbone=config.lr_encoder, weight_decay=config.weight_decay,
        epochs=config.epochs, steps_per_epoch=math.ceil(len(train_x) / config.batch_size),
        warmup_epochs=config.warmup_epochs)

    def steps(epoch: int) -> tuple[Any, int]:
        order = torch.randperm(len(train_x), generator=make_generator(config.seed * 10_000 + epoch))
        starts = range(0, len(order), config.batch_size)
        return ([order[i:i + config.batch_size]] for i in starts), len(starts)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x, tokens = train_x[idx].to(device).float(), train_tokens[idx].to(device)
        with autocast(device, config.precision):
            loss, right = model.loss(x, tokens, config.label_smoothing)
        known = tokens[:, 1:-1] != UNK_ID
        return loss, {"loss_sum": float(loss.detach()) * len(idx), "items": len(idx),
                      "correct": int((right & known).sum()), "known": int(known.sum())}

    def evaluate(sums: dict[str, float]) -> dict[str, float]:
        val_accuracy = field_accuracy_of_tokens(predict_tokens(model, val[0], device), val[1], model.vocab.n_fields)
        return {"train_loss": sums["loss_sum"] / sums["items"], "train_accuracy": sums["correct"] / max(1, sums["known"]),
                "val_accuracy": val_accuracy, "val_score": val_accuracy}

    saved = None if checkpoint is None else RunCheckpoint(checkpoint, run_key(
        asdict(config), fingerprint(train[0], train[1], val[0], val[1], model.vocab.tokens_), model),
        existing=existing, kind="tagging run")
    return fit(model, optimizer, scheduler, epochs=config.epochs, steps=steps, step=step, evaluate=evaluate,
               checkpoint=saved, progress=progress)


# --------------------------------------------------------------------------- baseline and analysis


def handcrafted_tag_svm(train: pd.DataFrame, test: pd.DataFrame, fields: Sequence[str], *, C: float = 10.0,
                        seed: int = 0, n_jobs: int = 1, cache_dir: Path | None = None) -> pd.DataFrame:
    """Notebook 02's tag baseline on ``(train, test)``: HOG + LBP + colour features, one SVM per field.

    The descriptors are notebook 02's for photos (:func:`tutorial_lib.baselines.baseline_features`), fed to :func:`tutorial_lib.baselines.fit_tag_svm`
    with square-root class weights. Returns the predicted tags of ``test``, one column per field.
    """
    from . import baselines

    extractor = baselines.baseline_features("clothing", n_jobs=n_jobs, cache_dir=cache_dir)
    x_train, x_test = extractor.transform(list(train["path"])), extractor.transform(list(test["path"]))
    tagger = baselines.fit_tag_svm(x_train, train, list(fields), C=C, class_weight="tempered", random_state=seed,
                                   n_jobs=n_jobs)
    return tagger.predict(x_test)


def combination_rates(predictions: dict[str, pd.DataFrame], reference: pd.DataFrame,
                      combinations: dict[str, Sequence[str]]) -> pd.DataFrame:
    """How often each method's tags form a combination that occurs in ``reference`` (the training table).

    A row per method, a column per named combination of fields, e.g. ``{"category path":
    ["masterCategory", "subCategory", "articleType"]}``: the share of images whose predicted
    values of those fields appear together in at least one training image. Independent
    heads can write "Footwear / Topwear / Tshirts"; a decoder that conditions each tag on
    the previous ones should not.
    """
    rows = {}
    for method, table in predictions.items():
        row = {}
        for name, fields in combinations.items():
            seen = set(map(tuple, reference[list(fields)].astype(str).to_numpy()))
            row[name] = float(np.mean([tuple(r) in seen for r in table[list(fields)].astype(str).to_numpy()]))
        rows[method] = row
    return pd.DataFrame(rows).T


def paired_bootstrap(true: pd.DataFrame, pred_a: pd.DataFrame, pred_b: pd.DataFrame, fields: Sequence[str], *,
                     n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """How sure is "method B beats method A" on this test split? A paired bootstrap over the test images.

    Resamples the images with replacement and recomputes B - A for micro-F1 (with one predicted tag per
    field, micro-F1 is the share of known tags predicted right) and for exact match. Returns the
    observed difference and its 95 % interval per metric: an interval that contains 0 means the test
    split cannot tell the two methods apart.
    """
    fields = list(fields)
    true_v = true[fields].astype(str).to_numpy()
    known = true_v != ""
    right = {name: ((p[fields].astype(str).to_numpy() == true_v) & known) for name, p in (("a", pred_a), ("b", pred_b))}
    per_image = {name: (r.sum(1), (r | ~known).all(1)) for name, r in right.items()}
    n_known = known.sum(1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(true_v), size=(n_resamples, len(true_v)))

    def micro(correct: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        return correct[rows].sum(-1) / np.maximum(n_known[rows].sum(-1), 1)

    rows = {}
    for metric, pick in (("micro_f1", 0), ("exact_match", 1)):
        a, b = per_image["a"][pick], per_image["b"][pick]
        if metric == "micro_f1":
            observed, resampled = micro(b, slice(None)) - micro(a, slice(None)), micro(b, idx) - micro(a, idx)
        else:
            observed, resampled = b.mean() - a.mean(), b[idx].mean(1) - a[idx].mean(1)
        lo, hi = np.quantile(resampled, [0.025, 0.975])
        rows[metric] = {"B - A": float(observed), "95% low": float(lo), "95% high": float(hi)}
    return pd.DataFrame(rows).T
