"""Metric functions: hand-computed cases, invariances, and agreement with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from geoseg import metrics

# Six labelled pixels: cluster 0 holds 3 of class 0 and 1 of class 1, cluster 1 holds 2 of class 1.
PRED = np.array([[0, 0, 0, 0, 1, 1]], np.uint8)
TRUE = np.array([[0, 0, 0, 1, 1, 1]], np.uint8)


def _table(pred: np.ndarray, true: np.ndarray, k: int, c: int, ignore: int = 255) -> np.ndarray:
    return metrics.confusion_matrix(pred, true, ignore)[:k, :c]


def test_confusion_matrix_counts_pairs() -> None:
    table = _table(PRED, TRUE, 2, 2)
    assert table.tolist() == [[3, 1], [0, 2]]
    full = metrics.confusion_matrix(PRED, TRUE)
    assert full.shape == (256, 256) and full.sum() == 6


def test_hand_computed_accuracy_and_iou() -> None:
    table = _table(PRED, TRUE, 2, 2)
    mapping = metrics.hungarian_mapping(table)
    assert mapping.tolist() == [0, 1]
    s = metrics.score(table, mapping)
    assert s.n_pixels == 6
    assert s.accuracy == pytest.approx(5 / 6)
    # class 0: TP 3, FP 1, FN 0 -> 3/4; class 1: TP 2, FP 0, FN 1 -> 2/3
    assert s.per_class_iou.tolist() == pytest.approx([3 / 4, 2 / 3])
    assert s.miou == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_hand_computed_nmi_and_ari() -> None:
    table = _table(PRED, TRUE, 2, 2)
    n = 6
    mi = (
        3 / n * math.log(n * 3 / (4 * 3))
        + 1 / n * math.log(n * 1 / (4 * 3))
        + 2 / n * math.log(n * 2 / (2 * 3))
    )
    h_pred = -(4 / 6 * math.log(4 / 6) + 2 / 6 * math.log(2 / 6))
    h_true = math.log(2)
    assert metrics.nmi(table) == pytest.approx(mi / ((h_pred + h_true) / 2))
    # pairs: sum C(n_ij, 2) = 3 + 0 + 1 = 4; rows 6 + 1 = 7; columns 3 + 3 = 6; C(6, 2) = 15
    expected = 7 * 6 / 15
    assert metrics.ari(table) == pytest.approx((4 - expected) / ((7 + 6) / 2 - expected))


def test_nmi_ari_special_cases() -> None:
    assert metrics.nmi(np.array([[5]])) == 1.0
    assert metrics.ari(np.array([[5]])) == 1.0
    assert metrics.nmi(np.array([[2, 2]])) == 0.0  # one cluster, two classes
    perfect = np.array([[4, 0, 0], [0, 3, 0], [0, 0, 9]])
    assert metrics.nmi(perfect) == pytest.approx(1.0)
    assert metrics.ari(perfect) == pytest.approx(1.0)
    assert metrics.ari(np.array([[1, 1], [1, 1]])) == pytest.approx(
        -0.5
    )  # sklearn's worse-than-chance example


def test_many_to_one_hand_computed() -> None:
    table = np.array([[5, 1], [4, 0], [0, 6]])
    many = metrics.majority_mapping(table)
    one = metrics.hungarian_mapping(table)
    assert many.tolist() == [0, 0, 1]
    assert one.tolist() == [0, -1, 1]
    assert metrics.score(table, many).accuracy == pytest.approx(15 / 16)
    assert metrics.score(table, one).accuracy == pytest.approx(11 / 16)  # cluster 1 is an error
    # 1-to-1, class 0: TP 5, FP 0, FN 1 + 4 -> 5/10; class 1: TP 6, FP 1, FN 0 -> 6/7
    assert metrics.score(table, one).per_class_iou.tolist() == pytest.approx([5 / 10, 6 / 7])


def test_clusters_without_pixels_map_to_nothing() -> None:
    table = np.array([[0, 0, 0], [5, 1, 0], [0, 0, 0], [1, 4, 2]])
    assert metrics.hungarian_mapping(table).tolist() == [-1, 0, -1, 1]
    assert metrics.majority_mapping(table).tolist() == [-1, 0, -1, 1]
    assert metrics.hungarian_mapping(np.zeros((3, 2), np.int64)).tolist() == [-1, -1, -1]


def test_missing_predictions_are_errors() -> None:
    pred = np.array([0, 0, 255, 1], np.uint8)
    true = np.array([0, 0, 0, 1], np.uint8)
    full = metrics.confusion_matrix(pred, true)
    table, missing = full[:2, :2], full[255, :2]
    assert missing.tolist() == [1, 0]
    s = metrics.score(table, metrics.hungarian_mapping(table), missing)
    assert s.n_pixels == 4
    assert s.accuracy == pytest.approx(3 / 4)
    assert s.per_class_iou.tolist() == pytest.approx([2 / 3, 1.0])


def test_ignore_pixels_never_count() -> None:
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, (40, 40)).astype(np.uint8)
    pred = rng.integers(0, 4, (40, 40)).astype(np.uint8)
    ignored = rng.random((40, 40)) < 0.3
    for ignore in (255, 0):
        labels = np.where(ignored, ignore, true).astype(np.uint8)
        base = metrics.confusion_matrix(pred, labels, ignore)
        other = pred.copy()
        other[ignored] = (other[ignored] + 1) % 4  # change predictions only where ignored
        assert np.array_equal(metrics.confusion_matrix(other, labels, ignore), base)
        assert base.sum() == (~ignored & (labels != ignore)).sum()
        assert base[:, ignore].sum() == 0


def test_constant_prediction() -> None:
    rng = np.random.default_rng(2)
    true = rng.choice(4, size=(30, 50), p=[0.1, 0.5, 0.25, 0.15]).astype(np.uint8)
    pred = np.zeros_like(true)
    full = metrics.confusion_matrix(pred, true)
    table = full[:4, :4]
    s = metrics.score(table, metrics.hungarian_mapping(table))
    shares = np.bincount(true.ravel(), minlength=4) / true.size
    assert s.accuracy == pytest.approx(shares.max())
    majority = int(shares.argmax())
    assert s.per_class_iou[majority] == pytest.approx(shares.max())
    assert s.miou == pytest.approx(s.per_class_iou[majority] / 4)
    assert metrics.nmi(table) == 0.0
    assert metrics.ari(table) == pytest.approx(0.0)


def _random_case(seed: int, k: int = 6, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, 5000).astype(np.uint8)
    noise = rng.random(5000) < 0.4
    pred = np.where(noise, rng.integers(0, k, 5000), (true * 7 + 3) % k).astype(np.uint8)
    return pred, true


@pytest.mark.parametrize("many_to_one", [False, True])
def test_permuting_cluster_ids_changes_no_metric(many_to_one: bool) -> None:
    pred, true = _random_case(3)
    perm = np.random.default_rng(4).permutation(6).astype(np.uint8)
    results = []
    for p in (pred, perm[pred]):
        table = metrics.confusion_matrix(p, true)[:6, :5]
        mapping = metrics.majority_mapping(table) if many_to_one else metrics.hungarian_mapping(table)
        s = metrics.score(table, mapping)
        results.append((s.accuracy, s.miou, *s.per_class_iou, metrics.nmi(table), metrics.ari(table)))
    assert results[0] == pytest.approx(results[1])
    assert results[0][0] < 1.0  # a non-trivial case


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.tuples(st.integers(1, 9), st.integers(1, 6)), elements=st.integers(0, 50)),
)
def test_many_to_one_never_below_one_to_one(table: np.ndarray) -> None:
    one = metrics.score(table, metrics.hungarian_mapping(table))
    many = metrics.score(table, metrics.majority_mapping(table))
    if table.sum() == 0:
        assert math.isnan(one.accuracy) and math.isnan(many.accuracy)
    else:
        assert many.accuracy >= one.accuracy - 1e-12


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 8),
    st.integers(1, 6),
    st.integers(2, 400),
)
def test_nmi_ari_equal_sklearn(seed: int, k: int, c: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n).astype(np.uint8)
    pred = np.where(rng.random(n) < 0.5, true % k, rng.integers(0, k, n)).astype(np.uint8)
    table = metrics.confusion_matrix(pred, true)[:k, :c]
    assert metrics.nmi(table) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-10)
    assert metrics.ari(table) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-10)


def test_nmi_ari_equal_sklearn_on_real_sized_counts() -> None:
    pred, true = _random_case(5, k=12, c=6)
    pred = np.tile(pred, 40)  # 200k pixels: float rounding must stay negligible
    true = np.tile(true, 40)
    table = metrics.confusion_matrix(pred, true)[:12, :6]
    assert metrics.nmi(table) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-10)
    assert metrics.ari(table) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-10)


def test_confusion_matrix_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
