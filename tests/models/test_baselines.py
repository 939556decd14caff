"""Baselines (predictors without a head): each one does exactly what its name says."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, InputSpec, OutputShape, get_model

BASELINES = [n for n in MODELS if get_model(n).predictor]


def build(name: str, spec: InputSpec, out: OutputShape, causal: bool = False, **hp: object) -> torch.nn.Module:
    model_spec = get_model(name)
    return model_spec.instantiate(spec, model_spec.make_hparams(**hp), causal, out)


def test_every_baseline_is_registered() -> None:
    assert {"last-value", "seasonal-naive", "linear", "majority", "bow-logreg", "char-ngram"} <= set(BASELINES)
    for name in BASELINES:
        assert get_model(name).outputs, name  # each says what it can serve


def test_last_value_repeats_each_channels_last_value() -> None:
    x = torch.randn(4, 10, 3)
    y = build("last-value", InputSpec(n_features=3, seq_len=10), OutputShape("forecast", shape=(5, 3)))(
        x, torch.ones(4, 10, dtype=torch.bool))
    assert y.shape == (4, 5, 3)
    assert torch.equal(y, x[:, -1:, :].expand(-1, 5, -1))


def test_seasonal_naive_repeats_the_last_season() -> None:
    x = torch.arange(24.0).view(1, 24, 1)  # steps 0..23, season 12
    spec = InputSpec(n_features=1, season=12, seq_len=24)
    model = build("seasonal-naive", spec, OutputShape("forecast", shape=(15, 1)))
    y = model(x, torch.ones(1, 24, dtype=torch.bool)).flatten().tolist()
    # step h (0-based) after the window is step 24 + h; one season back is 12 + h, two for h >= 12.
    assert y == [12.0 + h for h in range(12)] + [12.0, 13.0, 14.0]


def test_seasonal_naive_explains_a_short_look_back() -> None:
    with pytest.raises(ValueError, match="look-back of at least 12"):
        build("seasonal-naive", InputSpec(n_features=1, season=12, seq_len=6), OutputShape("forecast", shape=(3, 1)))
    with pytest.raises(ValueError, match="needs a season"):
        build("seasonal-naive", InputSpec(n_features=1, seq_len=24), OutputShape("forecast", shape=(3, 1)))


def test_linear_is_one_map_shared_by_channels_and_learns() -> None:
    model = build("linear", InputSpec(n_features=2, seq_len=8), OutputShape("forecast", shape=(4, 2)))
    assert sum(p.numel() for p in model.parameters()) == 8 * 4 + 4  # shared across the two channels
    x = torch.randn(16, 8, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(16, 8, dtype=torch.bool)
    target = x[:, -4:, :]  # the window's last four values: linear in it, whatever the level
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x, mask), target)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first


def test_majority_predicts_the_most_frequent_training_class() -> None:
    model = build("majority", InputSpec(vocab_size=10), OutputShape("class_per_sequence", n_classes=3))
    loader = [{"x": torch.zeros(4, 2, dtype=torch.long), "y": torch.tensor([2, 2, 0, 2])},
              {"x": torch.zeros(2, 2, dtype=torch.long), "y": torch.tensor([1, 2])}]
    model.fit_data(loader)
    scores = model(torch.randint(1, 10, (5, 7)), torch.ones(5, 7, dtype=torch.bool))
    assert scores.shape == (5, 3) and (scores.argmax(-1) == 2).all()
    assert torch.allclose(scores[0].exp(), torch.tensor([1 / 6, 1 / 6, 4 / 6]))
    assert not any(p.requires_grad for p in model.parameters())  # nothing for gradient descent


def test_bag_of_words_ignores_padding_and_order() -> None:
    model = build("bow-logreg", InputSpec(vocab_size=20), OutputShape("class_per_sequence", n_classes=2))
    torch.nn.init.normal_(model.bag.weight)
    a = torch.tensor([[3, 5, 7, 0, 0]])
    b = torch.tensor([[7, 3, 5]])
    mask_a = a != 0
    assert torch.allclose(model(a, mask_a), model(b, torch.ones_like(b, dtype=torch.bool)), atol=1e-6)


def test_char_ngram_gives_normalised_causal_log_probabilities() -> None:
    V = 6
    model = build("char-ngram", InputSpec(vocab_size=V), OutputShape("class_per_step", n_classes=V), causal=True,
                  order=3)
    text = torch.tensor([[2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3]])
    model.fit_data([{"x": text[:, :-1], "y": text[:, 1:]}])
    x = torch.tensor([[2, 3, 4, 2, 5, 5]])
    mask = torch.ones_like(x, dtype=torch.bool)
    logp = model(x, mask)
    assert logp.shape == (1, 6, V)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 6), atol=1e-6)
    assert logp[0, 0].argmax() == 3 and logp[0, 1].argmax() == 4 and logp[0, 2].argmax() == 2  # learned pattern
    changed = x.clone()
    changed[0, 3:] = 1
    assert torch.equal(model(changed, mask)[0, :3], logp[0, :3])  # never reads later steps
