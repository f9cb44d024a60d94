"""The kNN probe head: scikit-learn's cosine kNN reproduced, k chosen on the validation split,
the fitted state carried by the state dict, and a fit inside a real Trainer (nothing to step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from audioml.models.fitted_heads import KNNHead, fit_heads


def blobs(n: int, classes: int = 4, dim: int = 16, noise: float = 1.0, seed: int = 0):
    centres = np.random.default_rng(0).normal(size=(classes, dim))  # the same classes for every seed
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_equals_scikit_learns_cosine_kneighbors(k):
    train, train_labels = blobs(120, seed=1)
    test, _ = blobs(50, seed=2)
    head = KNNHead(16, 4, ks=[k])
    head.fit(torch.from_numpy(train), torch.from_numpy(train_labels), torch.zeros(0, 16), torch.zeros(0))
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train, train_labels)
    logits = head(torch.from_numpy(test))
    np.testing.assert_allclose(logits.softmax(dim=1).numpy(), reference.predict_proba(test), atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(dim=1).numpy(), reference.predict(test))


def test_k_is_chosen_on_validation():
    train, train_labels = blobs(300, noise=2.2, seed=3)
    flip = np.random.default_rng(4).random(300) < 0.3  # noisy training labels: one neighbour is a poor vote
    train_labels = np.where(flip, (train_labels + 1) % 4, train_labels)
    val, val_labels = blobs(200, noise=2.2, seed=13)
    ks = [1, 3, 9, 27]
    head = KNNHead(16, 4, ks=ks)
    report = head.fit(torch.from_numpy(train), torch.from_numpy(train_labels), torch.from_numpy(val),
                      torch.from_numpy(val_labels))
    expected = [f1_score(val_labels, KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
                         .fit(train, train_labels).predict(val), average="macro") for k in ks]
    for k, score in zip(ks, expected):
        assert report[f"knn/val_macro_f1_k{k}"] == pytest.approx(score)
    assert int(head.k) == ks[int(np.argmax(expected))] == report["knn/k"]
    assert int(head.k) > 1  # the noisy labels make more neighbours better here


def test_fitted_state_travels_in_the_state_dict_and_unfitted_is_uniform():
    train, labels = blobs(40, seed=5)
    head = KNNHead(16, 4, ks=[3])
    probe = torch.from_numpy(blobs(6, seed=6)[0])
    assert torch.equal(head(probe), torch.zeros(6, 4)) and not head.fitted
    head.fit(torch.from_numpy(train), torch.from_numpy(labels), torch.zeros(0, 16), torch.zeros(0))
    rebuilt = KNNHead(16, 4, ks=[3])  # the shapes a checkpoint's record describes: fixed by the constructor
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in head.state_dict().items()}
    rebuilt.load_state_dict(head.state_dict())
    assert rebuilt.fitted and int(rebuilt.k) == 3 and int(rebuilt.bank_count) == 40
    torch.testing.assert_close(rebuilt(probe), head(probe))
    with pytest.raises(ValueError, match="select_by"):
        KNNHead(16, 4, select_by="auc")
    small = KNNHead(16, 4, ks=[3], bank_size=30)
    with pytest.raises(ValueError, match=r"holds 30 training clips and the training split has 40: set "
                                         r"model.head.bank_size=40"):
        small.fit(torch.from_numpy(train), torch.from_numpy(labels), torch.zeros(0, 16), torch.zeros(0))


def test_fit_heads_feeds_the_head_what_reaches_it_inside_a_model():
    torch.manual_seed(0)
    train, labels = blobs(60, seed=7)
    projection = torch.nn.Linear(16, 8)
    model = torch.nn.Sequential(projection, KNNHead(8, 4, ks=[5]))
    batches = [(torch.from_numpy(train[i:i + 16]), torch.from_numpy(labels[i:i + 16])) for i in range(0, 60, 16)]
    report = fit_heads(model, batches, batches)
    with torch.no_grad():
        projected = projection(torch.from_numpy(train)).numpy()
        predicted = model(torch.from_numpy(train)).argmax(dim=1).numpy()
    expected = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(projected, labels)
    np.testing.assert_array_equal(predicted, expected.predict(projected))
    assert report["knn/k"] == 5 and model.training
    assert fit_heads(model, batches, batches) == {}  # fitted once
