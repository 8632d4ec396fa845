"""qd.evaluate.metrics against small cases worked out by hand: top-k accuracy, MAP@k, ties, the
confusion matrix, per-class scores, AUROC of the open-set score, reliability curves and ECE."""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qd.evaluate import metrics
from qd.evaluate.metrics import auroc, reliability
from qd.infer.model import top_k

# 4 rows, 3 classes. Ranking per row (most probable first):
# row0 true 0: [0, 1, 2] -> rank 1
# row1 true 1: [2, 1, 0] -> rank 2
# row2 true 2: [0, 1, 2] -> rank 3
# row3 true 0: [1, 0, 2] -> rank 2
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.1, 0.3, 0.6],
    [0.5, 0.3, 0.2],
    [0.3, 0.6, 0.1],
])
LABELS = np.array([0, 1, 2, 0])


def test_top_k_accuracy_by_hand():
    assert metrics.top_k_accuracy(PROBS, LABELS, 1) == pytest.approx(1 / 4)
    assert metrics.top_k_accuracy(PROBS, LABELS, 2) == pytest.approx(3 / 4)
    assert metrics.top_k_accuracy(PROBS, LABELS, 3) == pytest.approx(1.0)


def test_map_at_3_by_hand():
    # (1 + 1/2 + 1/3 + 1/2) / 4
    assert metrics.map_at_k(PROBS, LABELS, 3) == pytest.approx((1 + 0.5 + 1 / 3 + 0.5) / 4)
    # at k=2 the rank-3 row scores 0
    assert metrics.map_at_k(PROBS, LABELS, 2) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_ties_rank_lower_index_first():
    probs = np.array([[0.5, 0.5, 0.0]])
    assert top_k(probs, 2)[0].tolist() == [[0, 1]]
    assert metrics.map_at_k(probs, np.array([1]), 3) == pytest.approx(0.5)


def test_empty_input_gives_nan_not_a_crash():
    empty = np.zeros((0, 3))
    assert math.isnan(metrics.top_k_accuracy(empty, np.zeros(0, int), 1))
    assert math.isnan(metrics.map_at_k(empty, np.zeros(0, int)))


def test_confusion_matrix_rows_are_true_classes():
    predicted = PROBS.argmax(axis=1)  # [0, 2, 0, 1]
    cm = metrics.confusion_matrix(LABELS, predicted, 3)
    assert cm.tolist() == [
        [1, 1, 0],  # true 0: predicted 0 once, 1 once
        [0, 0, 1],  # true 1: predicted 2
        [1, 0, 0],  # true 2: predicted 0
    ]
    assert metrics.normalize_rows(cm)[0].tolist() == [0.5, 0.5, 0.0]


def test_per_class_scores_by_hand():
    cm = np.array([
        [8, 2, 0],
        [1, 3, 0],
        [0, 0, 0],  # class 2: no examples, never predicted
    ])
    a, b, c = metrics.per_class_scores(cm, ["a", "b", "c"])
    assert a.precision == pytest.approx(8 / 9) and a.recall == pytest.approx(8 / 10)
    assert a.f1 == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert (a.support, a.predicted) == (10, 9)
    assert b.precision == pytest.approx(3 / 5) and b.recall == pytest.approx(3 / 4)
    assert c.precision is None and c.recall is None and c.f1 is None and c.support == 0


def test_never_predicted_class_with_examples_scores_zero():
    cm = np.array([[2, 0], [3, 0]])
    _, b = metrics.per_class_scores(cm, ["a", "b"])
    assert (b.precision, b.recall, b.f1) == (0.0, 0.0, 0.0)


def test_worst_first_skips_absent_classes_and_sorts_by_f1():
    cm = np.array([
        [8, 2, 0],
        [1, 3, 0],
        [0, 0, 0],
    ])
    scores = metrics.per_class_scores(cm, ["a", "b", "c"])
    assert [s.name for s in metrics.worst_first(scores)] == ["b", "a"]
    f1_a, f1_b = scores[0].f1, scores[1].f1
    assert metrics.macro_f1(scores) == pytest.approx((f1_a + f1_b) / 2)


def test_most_confused_pairs_by_count_then_share():
    cm = np.array([
        [5, 3, 1],
        [3, 1, 0],
        [0, 2, 9],
    ])
    pairs = metrics.most_confused(cm, ["a", "b", "c"], limit=3)
    # a->b and b->a both 3; b->a has the larger share (3/4 vs 3/9)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("b", "a", 3), ("a", "b", 3), ("c", "b", 2)]
    assert pairs[0].share == pytest.approx(3 / 4)


def test_summary_and_agreement():
    s = metrics.summarize(PROBS, LABELS)
    assert (s.count, s.top1, s.top3) == (4, 0.25, 1.0)
    assert metrics.agreement(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == pytest.approx(0.75)


@st.composite
def predictions(draw):
    n = draw(st.integers(1, 40))
    c = draw(st.integers(2, 8))
    probs = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0, 1, allow_nan=False)))
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    return probs, labels


@settings(max_examples=60, deadline=None)
@given(predictions())
def test_metric_invariants(case):
    probs, labels = case
    c = probs.shape[1]
    top1 = metrics.top_k_accuracy(probs, labels, 1)
    top3 = metrics.top_k_accuracy(probs, labels, 3)
    map3 = metrics.map_at_k(probs, labels, 3)
    assert top1 <= map3 + 1e-12 and map3 <= top3 + 1e-12
    assert metrics.top_k_accuracy(probs, labels, c) == 1.0
    cm = metrics.confusion_matrix(labels, top_k(probs, 1)[0][:, 0], c)
    assert cm.sum() == len(labels) and np.trace(cm) / len(labels) == pytest.approx(top1)
    scores = metrics.per_class_scores(cm, [str(i) for i in range(c)])
    # support-weighted recall is accuracy
    assert sum(s.recall * s.support for s in scores if s.support) / len(labels) == pytest.approx(top1)
    for s in scores:
        for value in (s.precision, s.recall, s.f1):
            assert value is None or 0.0 <= value <= 1.0
    pairs = metrics.most_confused(cm, [str(i) for i in range(c)], limit=100)
    assert sum(p.count for p in pairs) == len(labels) - np.trace(cm)


# ----------------------------------------------------------------------------- open set and calibration


def test_auroc_by_hand_and_against_all_pairs():
    assert auroc([3, 4, 5], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 1], [1, 0]) == 0.875  # pairs: 2>1, 2>0, 1=1 (half), 1>0
    assert math.isnan(auroc([], [1.0]))
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 20, 300).astype(float), rng.integers(0, 15, 200).astype(float)
    pairs = (known[:, None] > unknown[None]).mean() + 0.5 * (known[:, None] == unknown[None]).mean()
    assert auroc(known, unknown) == pytest.approx(pairs)



def test_reliability_and_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.95, 0.05]])
    labels = np.array([0, 1, 1, 0])
    r = reliability(probs, labels, bins=10)
    assert r.counts.sum() == 4 and r.counts[5] == 1 and r.counts[7] == 1 and r.counts[8] == 1 and r.counts[9] == 1
    # bins: 0.6 wrong, 0.8 right, 0.9 right, 0.95 right
    assert r.ece == pytest.approx((0.6 + 0.2 + 0.1 + 0.05) / 4)
    assert r.accuracy[5] == 0.0 and r.confidence[9] == pytest.approx(0.95)
    perfect = reliability(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect.ece == 0.0
