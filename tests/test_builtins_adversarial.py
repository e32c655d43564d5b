"""The adversarial-ML builtins, called directly as the plain functions they are.

One digits split and one trained classifier are shared by the module (training takes ~50 ms,
but every test reads the same fixed-seed numbers, which keeps the assertions comparable).
"""

import json
from collections.abc import Callable

import numpy as np
import pytest
from dioptra_builtins.attacks.evasion import fgsm, pgd
from dioptra_builtins.datasets.arrays import ArrayDataset
from dioptra_builtins.datasets.digits import load_digits_split
from dioptra_builtins.defenses.preprocessing import (
    feature_squeezing,
    jpeg_compression,
    spatial_smoothing,
)
from dioptra_builtins.estimators.sklearn_models import (
    ScikitlearnClassifier,
    train_logistic_regression,
)
from dioptra_builtins.metrics.distance import perturbation_distance
from dioptra_builtins.metrics.performance import accuracy
from dioptra_builtins.metrics.report import summarize

EPSILON = 0.2


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    return load_digits_split(test_size=0.25, seed=0)


@pytest.fixture(scope="module")
def classifier(digits: ArrayDataset) -> ScikitlearnClassifier:
    return train_logistic_regression(digits, seed=0)


@pytest.fixture(scope="module")
def attacked(classifier: ScikitlearnClassifier, digits: ArrayDataset) -> ArrayDataset:
    return fgsm(classifier, digits, eps=EPSILON)


def test_digits_split_holds_the_requested_test_fraction_scaled_to_unit_range(
    digits: ArrayDataset,
) -> None:
    total = len(digits.x_train) + len(digits.x_test)
    assert len(digits.x_test) == pytest.approx(0.25 * total, abs=1)
    assert digits.x_test.shape[1] == 64 and digits.image_shape == (8, 8, 1)
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_test)) == set(range(10))


def test_digits_split_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    first, again, other = (load_digits_split(0.25, seed=s) for s in (3, 3, 4))
    assert np.array_equal(first.x_test, again.x_test)
    assert not np.array_equal(first.x_test, other.x_test)


@pytest.mark.parametrize("test_size", [0.0, 1.0, 1.5])
def test_digits_split_rejects_a_test_size_outside_zero_and_one(test_size: float) -> None:
    with pytest.raises(ValueError, match="test_size"):
        load_digits_split(test_size=test_size)


def test_clean_accuracy_of_the_trained_classifier_is_high(
    classifier: ScikitlearnClassifier, digits: ArrayDataset
) -> None:
    clean = accuracy(classifier, digits)
    assert isinstance(clean, float)
    assert clean >= 0.9


def test_fgsm_lowers_accuracy_substantially(
    classifier: ScikitlearnClassifier, digits: ArrayDataset, attacked: ArrayDataset
) -> None:
    assert accuracy(classifier, attacked) < accuracy(classifier, digits) - 0.3


def test_fgsm_moves_every_input_by_at_most_epsilon_within_the_clip_range(
    digits: ArrayDataset, attacked: ArrayDataset
) -> None:
    moved = np.abs(attacked.x_test - digits.x_test)
    assert moved.max() == pytest.approx(EPSILON, abs=1e-6)
    assert attacked.x_test.min() >= 0.0 and attacked.x_test.max() <= 1.0


def test_attacks_replace_only_the_test_inputs(digits: ArrayDataset, attacked: ArrayDataset) -> None:
    assert attacked.x_train is digits.x_train and attacked.y_test is digits.y_test
    assert attacked.name == "digits+fgsm(eps=0.2)"
    assert load_digits_split(0.25, seed=0).x_test.tolist() == digits.x_test.tolist()


def test_pgd_with_the_same_budget_is_at_least_as_strong_as_fgsm(
    classifier: ScikitlearnClassifier, digits: ArrayDataset, attacked: ArrayDataset
) -> None:
    stronger = pgd(classifier, digits, eps=EPSILON, eps_step=0.05, max_iter=10)
    assert np.abs(stronger.x_test - digits.x_test).max() <= EPSILON + 1e-6
    assert accuracy(classifier, stronger) <= accuracy(classifier, attacked)


def test_attacks_reject_an_unknown_norm(
    classifier: ScikitlearnClassifier, digits: ArrayDataset
) -> None:
    with pytest.raises(ValueError, match="norm must be one of l1, l2, linf"):
        fgsm(classifier, digits, eps=0.1, norm="l3")


def test_feature_squeezing_to_one_bit_recovers_part_of_the_lost_accuracy(
    classifier: ScikitlearnClassifier, attacked: ArrayDataset
) -> None:
    squeezed = feature_squeezing(attacked, bit_depth=1)
    assert set(np.unique(squeezed.x_test)) <= {0.0, 1.0}
    assert accuracy(classifier, squeezed) > accuracy(classifier, attacked) + 0.1


DEFENCES = [spatial_smoothing, jpeg_compression, feature_squeezing]


@pytest.mark.parametrize("defence", DEFENCES, ids=lambda f: f.__name__)
def test_defences_change_the_inputs_and_keep_their_shape_and_range(
    defence: Callable[[ArrayDataset], ArrayDataset], attacked: ArrayDataset
) -> None:
    defended = defence(attacked)
    assert defended.x_test.shape == attacked.x_test.shape
    assert not np.allclose(defended.x_test, attacked.x_test)
    assert defended.x_test.min() >= 0.0 and defended.x_test.max() <= 1.0


@pytest.mark.parametrize("defence", DEFENCES, ids=lambda f: f.__name__)
def test_defences_win_back_accuracy_on_attacked_inputs(
    defence: Callable[[ArrayDataset], ArrayDataset],
    classifier: ScikitlearnClassifier,
    attacked: ArrayDataset,
) -> None:
    # With the module's seeds: 0.096 attacked; 0.23, 0.13 and 0.39 once defended.
    assert accuracy(classifier, defence(attacked)) > accuracy(classifier, attacked) + 0.02


@pytest.mark.parametrize("defence", DEFENCES, ids=lambda f: f.__name__)
def test_defences_leave_clean_inputs_recognisable(
    defence: Callable[[ArrayDataset], ArrayDataset],
    classifier: ScikitlearnClassifier,
    digits: ArrayDataset,
) -> None:
    # Chance is 0.1; with the module's seeds: 0.75, 0.97 and 0.92 (clean: 0.97).
    assert accuracy(classifier, defence(digits)) >= 0.7


def test_distance_l2_linf_and_l1_are_per_sample_norms_averaged() -> None:
    clean = np.zeros((2, 2, 2))
    adversarial = np.array([[[3.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -1.0]]])
    assert perturbation_distance(clean, adversarial, norm="l2") == pytest.approx((5 + 1) / 2)
    assert perturbation_distance(clean, adversarial, norm="linf") == pytest.approx((4 + 1) / 2)
    assert perturbation_distance(clean, adversarial, norm="l1") == pytest.approx((7 + 1) / 2)


def test_distance_compares_the_test_inputs_of_two_datasets(
    digits: ArrayDataset, attacked: ArrayDataset
) -> None:
    assert perturbation_distance(digits, attacked, norm="linf") == pytest.approx(EPSILON, abs=1e-6)
    assert perturbation_distance(digits, digits) == 0.0


def test_distance_rejects_inputs_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        perturbation_distance(np.zeros((2, 3)), np.zeros((3, 2)))


def test_distance_rejects_an_unknown_norm() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        perturbation_distance(np.zeros((1, 2)), np.ones((1, 2)), norm="max")


def test_summary_turns_numpy_numbers_into_rounded_json_values() -> None:
    summary = summarize(
        accuracy=np.float32(0.123456), count=np.int64(7), tag="fgsm", ok=True, missing=None
    )
    assert summary == {"accuracy": 0.1235, "count": 7, "tag": "fgsm", "ok": True, "missing": None}
    assert type(summary["count"]) is int
    assert json.loads(json.dumps(summary)) == summary


def test_summary_reports_nan_as_none_because_json_has_no_nan() -> None:
    assert summarize(loss=float("nan"), decimals=2, error=np.float64(1 / 3)) == {
        "loss": None,
        "error": 0.33,
    }


def test_summary_rejects_a_value_that_is_not_a_scalar_by_name() -> None:
    with pytest.raises(TypeError, match="metric 'x' is a ndarray"):
        summarize(x=np.zeros(3))
