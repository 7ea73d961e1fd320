import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import ConfusionMatrix, MeanDice
from sklearn.metrics import f1_score, precision_score, recall_score

from bundle.metrics import VolumeDice, la_presence, volume_dice


def _slice(pixels: list[tuple[int, int]], size: int = 4) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    for i, j in pixels:
        m[0, i, j] = 1
    return m


@pytest.mark.parametrize(
    "inter, p, g, expected", [(2, 3, 3, 2 * 2 / 6), (0, 4, 0, 0.0), (5, 5, 5, 1.0), (1, 1, 3, 0.5)]
)
def test_volume_dice_formula(inter, p, g, expected):
    assert volume_dice(inter, p, g) == pytest.approx(expected)
    assert np.isnan(volume_dice(0, 0, 0))


def test_volume_dice_sums_slices_per_volume_across_batches():
    m = VolumeDice()
    m.reset()
    # volume 0, two slices over two batches: pred 3 px, label 4 px, overlap 2 -> 4/7
    # volume 1: pred 2 px, label 2 px, overlap 1 -> 1/2; volume 2: empty both -> left out
    m.update(
        ([_slice([(0, 0), (0, 1)]), _slice([(3, 3)])], [_slice([(0, 0), (1, 1)]), _slice([(3, 3), (2, 2)])], [0, 1])
    )
    m.update(
        (
            [_slice([(2, 2)]), _slice([]), _slice([])],
            [_slice([(2, 2), (3, 3)]), _slice([(0, 0)]), _slice([])],
            [0, 1, 2],
        )
    )
    # volume 0: pred {00,01,22}=3, label {00,11,22,33}=4, overlap {00,22}=2 -> 4/7
    # volume 1: pred {33}=1, label {33,22,00}=3, overlap {33}=1 -> 2/4
    assert m.compute() == pytest.approx(np.mean([4 / 7, 0.5]))


def _attached(handler):
    handler.attach(Engine(lambda engine, batch: None), "metric")  # MONAI's handlers compute only when attached
    handler.reset()
    return handler


def test_slice_presence_precision_recall_f1_against_sklearn():
    preds = [_slice([(0, 0)]), _slice([]), _slice([(1, 1)]), _slice([]), _slice([(2, 2)])]
    labels = [_slice([(0, 0)]), _slice([(1, 1)]), _slice([]), _slice([]), _slice([(2, 3)])]
    output = [{"pred": p, "label": g} for p, g in zip(preds, labels)]
    yp, y = la_presence(output)
    assert yp.flatten().tolist() == [1, 0, 1, 0, 1] and y.flatten().tolist() == [1, 1, 0, 0, 1]
    expected = {"precision": 2 / 3, "recall": 2 / 3, "f1 score": 2 / 3}
    sk = {"precision": precision_score, "recall": recall_score, "f1 score": f1_score}
    for name, value in expected.items():
        h = _attached(ConfusionMatrix(metric_name=name))
        h.update((yp, y))
        assert h.compute() == pytest.approx(value)
        assert sk[name](y.flatten().numpy(), yp.flatten().numpy()) == pytest.approx(value)


def test_mean_dice_is_over_slices_with_la_only():
    # MONAI's DiceMetric ignores slices whose ground truth is empty: 2 LA slices with Dice 1 and 0.5
    h = _attached(MeanDice(include_background=True))
    preds = torch.stack([_slice([(0, 0)]), _slice([(1, 1), (1, 2)]), _slice([(3, 3)])])
    labels = torch.stack([_slice([(0, 0)]), _slice([(1, 1)]), _slice([])])
    h.update((preds, labels))
    assert h.compute() == pytest.approx(np.mean([1.0, 2 * 1 / 3]))
