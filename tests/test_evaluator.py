"""The two-task metrics are RecBole's and equal sklearn's on fixed scores."""

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from sklearn.metrics import log_loss, roc_auc_score

from recbole_cstwa.evaluator import DIVISION_CLIP, TaskEvaluator


def test_two_task_metrics_equal_sklearn(make_config):
    config = make_config("ESMM")
    rng = np.random.default_rng(0)
    n = 3000
    click = (rng.random(n) < 0.2).astype(np.float32)
    purchase = click * (rng.random(n) < 0.3)
    p_click = np.clip(0.2 + 0.3 * click + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    p_purchase = np.clip(0.05 + 0.2 * purchase + 0.1 * rng.standard_normal(n), 0.001, 0.99)
    p_click[::7] = p_click[0]  # ties, which AUC must average

    evaluator = TaskEvaluator(config, config["eval_tasks"])
    for start in range(0, n, 1000):  # several batches, as the trainer feeds them
        batch = slice(start, start + 1000)
        interaction = Interaction(
            {"click": torch.tensor(click[batch]), "purchase": torch.tensor(purchase[batch])}
        )
        evaluator.collect(
            interaction,
            {"click": torch.tensor(p_click[batch]), "purchase": torch.tensor(p_purchase[batch])},
        )
    result = evaluator.evaluate()
    recbole_metrics = [metric for metric in result if metric.endswith(("_auc", "_logloss"))]
    assert recbole_metrics[:4] == ["click_auc", "click_logloss", "purchase_auc", "purchase_logloss"]
    assert result["click_auc"] == pytest.approx(roc_auc_score(click, p_click), abs=1e-4)
    assert result["purchase_auc"] == pytest.approx(roc_auc_score(purchase, p_purchase), abs=1e-4)
    assert result["click_logloss"] == pytest.approx(log_loss(click, p_click), abs=1e-4)
    assert result["purchase_logloss"] == pytest.approx(log_loss(purchase, p_purchase), abs=1e-4)
    # A second evaluation starts from an empty collection.
    evaluator.collect(
        interaction, {"click": torch.tensor(p_click[batch]), "purchase": torch.tensor(p_purchase[batch])}
    )
    again = evaluator.evaluate()
    assert again["click_auc"] == pytest.approx(roc_auc_score(click[batch], p_click[batch]), abs=1e-4)


def _labels_and_scores(seed=1, n=4000):
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.2).astype(np.float32)
    purchase = (click * (rng.random(n) < 0.3)).astype(np.float32)
    p_click = np.clip(0.2 + 0.3 * click + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    p_cvr = np.clip(0.3 + 0.3 * purchase + 0.2 * rng.standard_normal(n), 0.01, 0.99)
    # An impression-level purchase score that ranks clicked rows differently from p_cvr.
    p_purchase = np.clip(p_click * p_cvr + 0.05 * rng.standard_normal(n), 0.001, 0.99)
    return click, purchase, p_click, p_cvr, p_purchase


def test_cvr_of_a_purchase_score_alone_is_that_score(make_config):
    """A RecBole model trained on the purchase label has no click score to divide by."""
    config = make_config("MLP")
    click, purchase, _, _, p_purchase = _labels_and_scores()
    evaluator = TaskEvaluator(config, {"cvr": "purchase"})
    interaction = Interaction({"click": torch.tensor(click), "purchase": torch.tensor(purchase)})
    evaluator.collect(interaction, {"purchase": torch.tensor(p_purchase)})
    clicked = click == 1
    assert evaluator.evaluate()["cvr_auc"] == pytest.approx(
        roc_auc_score(purchase[clicked], p_purchase[clicked]), abs=1e-4
    )


@pytest.mark.parametrize("model, has_cvr_head", [("ESMM", True), ("MLP", False)])
def test_cvr_and_ctcvr_equal_sklearn(make_config, model, has_cvr_head):
    config = make_config(model, eval_tasks=["click", "purchase", "cvr", "ctcvr"])
    assert config["eval_tasks"] == {
        "click": "click",
        "purchase": "purchase",
        "cvr": "purchase",
        "ctcvr": "purchase",
    }
    click, purchase, p_click, p_cvr, p_purchase = _labels_and_scores()
    evaluator = TaskEvaluator(config, config["eval_tasks"])
    for start in range(0, len(click), 1000):
        rows = slice(start, start + 1000)
        scores = {"click": torch.tensor(p_click[rows]), "purchase": torch.tensor(p_purchase[rows])}
        if has_cvr_head:
            scores["cvr"] = torch.tensor(p_cvr[rows])
        interaction = Interaction(
            {"click": torch.tensor(click[rows]), "purchase": torch.tensor(purchase[rows])}
        )
        evaluator.collect(interaction, scores)
    result = evaluator.evaluate()
    clicked = click == 1
    # Without a pCVR head: pCTCVR / pCTR clipped to (0, 1), the ESMM paper's DIVISION baseline.
    division = np.clip(p_purchase / p_click, DIVISION_CLIP, 1 - DIVISION_CLIP)
    assert (p_purchase[clicked] / p_click[clicked] > 1).any()  # the clip binds on these scores
    cvr_scores = (p_cvr if has_cvr_head else division)[clicked]
    assert result["cvr_auc"] == pytest.approx(roc_auc_score(purchase[clicked], cvr_scores), abs=1e-4)
    assert result["cvr_logloss"] == pytest.approx(log_loss(purchase[clicked], cvr_scores), abs=1e-4)
    assert result["ctcvr_auc"] == pytest.approx(roc_auc_score(purchase, p_purchase), abs=1e-4)
    assert result["ctcvr_auc"] == result["purchase_auc"]
    # Not the same number as the purchase head over all impressions (the confusion the tasks avoid).
    assert abs(result["cvr_auc"] - result["purchase_auc"]) > 1e-3
