"""Label-scarce splits: stratification, seeds, validation carving, user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerassl.data.splits import Split, label_split, parse_labels, stratified_holdout
from kerassl.errors import UserError


def pool(sizes=(30,) * 10, unlabeled=25, seed=0) -> np.ndarray:
    """Shuffled training labels: sizes[k] examples of class k plus `unlabeled` -1s."""
    y = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(unlabeled, -1)])
    return np.random.default_rng(seed).permutation(y)


def test_total_labels_are_stratified_evenly():
    y = pool()
    split = label_split(y, 100, seed=0)
    np.testing.assert_array_equal(np.bincount(y[split.labeled], minlength=10), [10] * 10)
    assert len(split.validation) == 0 and split.labels == 100 and split.seed == 0
    assert np.all(np.diff(split.labeled) > 0)  # sorted, unique


def test_remainder_goes_to_a_seeded_subset_of_classes():
    y = pool()
    extra_classes = set()
    for seed in range(6):
        counts = np.bincount(y[label_split(y, 103, seed=seed).labeled], minlength=10)
        assert sorted(counts) == [10] * 7 + [11] * 3
        extra_classes.add(tuple(np.flatnonzero(counts == 11)))
    assert len(extra_classes) > 1  # not always the first classes


def test_reproducible_by_seed_and_different_across_seeds():
    y = pool()
    a = label_split(y, 50, seed=3, validation=0.2)
    b = label_split(y, 50, seed=3, validation=0.2)
    np.testing.assert_array_equal(a.labeled, b.labeled)
    np.testing.assert_array_equal(a.validation, b.validation)
    c = label_split(y, 50, seed=4, validation=0.2)
    assert not np.array_equal(a.labeled, c.labeled)


def test_unlabeled_never_chosen_and_indices_point_into_train():
    y = pool(unlabeled=500)
    split = label_split(y, 0.5, seed=1, validation=0.3)
    chosen = np.concatenate([split.labeled, split.validation])
    assert np.all(y[chosen] >= 0)
    assert chosen.min() >= 0 and chosen.max() < len(y)


def test_validation_is_carved_from_labels_per_class_and_disjoint():
    y = pool()
    split = label_split(y, 100, seed=0, validation=0.2)
    assert np.intersect1d(split.labeled, split.validation).size == 0
    np.testing.assert_array_equal(np.bincount(y[split.labeled], minlength=10), [8] * 10)
    # The final probe's examples: both parts, sorted, each index once.
    np.testing.assert_array_equal(
        split.all_labeled, np.sort(np.r_[split.labeled, split.validation])
    )
    assert len(np.unique(split.all_labeled)) == 100
    np.testing.assert_array_equal(np.bincount(y[split.validation], minlength=10), [2] * 10)
    # Validation comes out of the label budget, not on top of it.
    assert len(split.labeled) + len(split.validation) == 100


def test_each_class_keeps_a_training_example():
    y = pool()
    two = label_split(y, 20, seed=0, validation=0.9)  # 2 per class: 1 train, 1 validation
    np.testing.assert_array_equal(np.bincount(y[two.labeled], minlength=10), [1] * 10)
    np.testing.assert_array_equal(np.bincount(y[two.validation], minlength=10), [1] * 10)
    one = label_split(y, 10, seed=0, validation=0.5)  # 1 per class stays for training
    assert len(one.labeled) == 10 and len(one.validation) == 0


def test_fraction_mode_rounds_per_class_with_at_least_one():
    y = pool(sizes=(50, 20, 3, 15))
    split = label_split(y, 0.1, seed=0)
    # round(5.0), round(2.0), max(1, round(0.3)), round(1.5) half up
    np.testing.assert_array_equal(np.bincount(y[split.labeled]), [5, 2, 1, 2])
    everything = label_split(y, 1.0, seed=0)
    np.testing.assert_array_equal(everything.labeled, np.flatnonzero(y >= 0))


def test_draw_is_uniform_within_a_class():
    # Each of the 10 examples of a class should be picked ~ 1/10 of the time.
    y = pool(sizes=(10, 10), unlabeled=0)
    hits = np.zeros(len(y))
    for seed in range(300):
        hits[label_split(y, 2, seed=seed).labeled] += 1
    assert hits.sum() == 600 and hits.min() > 10 and hits.max() < 55  # expectation 30


def test_too_few_examples_names_the_class():
    y = pool(sizes=(30, 30, 3, 30), unlabeled=0)
    with pytest.raises(UserError, match="class 2 has 3 labeled examples, 10 asked"):
        label_split(y, 40, seed=0)
    only_unlabeled = np.full(8, -1)
    with pytest.raises(UserError, match="no labeled"):
        label_split(only_unlabeled, 4, seed=0)


def test_fewer_labels_than_classes():
    with pytest.raises(UserError, match="fewer than the 10 classes"):
        label_split(pool(), 9, seed=0)


@pytest.mark.parametrize("validation", [-0.1, 1.0])
def test_bad_validation_fraction(validation):
    with pytest.raises(UserError, match="validation"):
        label_split(pool(), 100, seed=0, validation=validation)


@pytest.mark.parametrize(
    "spec, expected",
    [("100", 100), (" 7 ", 7), ("0.2", 0.2), ("20%", 0.2), ("1.0", 1.0), (1, 1), (0.5, 0.5)],
)
def test_parse_labels(spec, expected):
    value = parse_labels(spec)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("spec", ["abc", "0", "-5", "1.5", "nan", "", "0.0", True, "150%"])
def test_parse_labels_rejects(spec):
    with pytest.raises(UserError, match="labels must be"):
        parse_labels(spec)


def test_to_json_round_trip():
    y = pool(sizes=(12, 12, 12))
    split = label_split(y, 9, seed=5, validation=1 / 3)
    record = json.loads(json.dumps(split.to_json(y, ["a", "b", "c"])))
    assert record["counts"] == {k: {"labeled": 2, "validation": 1} for k in "abc"}
    assert record["seed"] == 5 and record["labels"] == 9 and record["num_labeled"] == 6
    assert all(y[i] == 1 for i in record["per_class"]["b"]["labeled"])
    restored = Split.from_json(record)
    np.testing.assert_array_equal(restored.labeled, split.labeled)
    np.testing.assert_array_equal(restored.validation, split.validation)


def test_stratified_holdout():
    y = np.array([0] * 10 + [1] * 5 + [2] * 1 + [-1] * 4)
    keep, held = stratified_holdout(y, 0.2, seed=0)
    assert np.intersect1d(keep, held).size == 0 and len(keep) + len(held) == len(y)
    # round(0.2 n) half up, at least 1, at most n - 1; a single example stays.
    np.testing.assert_array_equal(np.bincount(y[held], minlength=3), [2, 1, 0])
    assert np.all(y[held] >= 0) and np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    np.testing.assert_array_equal(held, stratified_holdout(y, 0.2, seed=0)[1])
    assert not np.array_equal(held, stratified_holdout(y, 0.2, seed=1)[1])
    np.testing.assert_array_equal(np.bincount(y[stratified_holdout(y, 0.9, 0)[1]]), [9, 4])


def test_every_label_is_named_100_percent_not_one_label():
    from kerassl.evaluation.options import budget_name, parse_budgets

    budgets = parse_budgets("1,1.0,100%,0.1,10/class")
    assert [budget_name(b) for b in budgets] == ["1", "100%", "0.1", "10/class"]
    assert parse_labels(budget_name(1.0)) == 1.0  # the name reads back as the budget
