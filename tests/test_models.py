"""Every model runs one epoch end to end and reports both tasks' metrics."""

import math

import pytest
import torch
from recbole.model.context_aware_recommender import DeepFM

from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.registry import get_model, plugin_model_names

#: The default eval_tasks: click, purchase and cvr (purchase over the clicked rows).
TWO_TASK_KEYS = {"click_auc", "click_logloss", "purchase_auc", "purchase_logloss", "cvr_auc", "cvr_logloss"}


def _check_metrics(result, keys):
    for part in ("best_valid_result", "test_result"):
        assert set(result[part]) == keys
        for metric, value in result[part].items():
            assert math.isfinite(value), (metric, value)
            if metric.endswith("auc"):
                assert 0.0 <= value <= 1.0
            else:
                assert value > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("model", plugin_model_names())
def test_plugin_model_one_epoch(run_tiny, model):
    result = run_tiny(model)
    assert result["model"] == model
    _check_metrics(result, TWO_TASK_KEYS)
    assert result["best_valid_score"] == result["best_valid_result"]["purchase_auc"]
    # every training epoch is timed, whichever epoch loop the trainer runs
    assert len(result["epoch_seconds"]) == result["epochs_trained"] and min(result["epoch_seconds"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", ["click", "purchase"])
def test_recbole_builtin_model_on_either_label(run_tiny, label):
    result = run_tiny("DeepFM", LABEL_FIELD=label)
    extra = {"cvr_auc", "cvr_logloss"} if label == "purchase" else set()  # cvr needs a purchase score
    _check_metrics(result, {f"{label}_auc", f"{label}_logloss"} | extra)
    assert result["best_valid_score"] == result["best_valid_result"][f"{label}_auc"]


def test_builtin_model_never_sees_the_other_label(make_config):
    config = make_config("DeepFM", LABEL_FIELD="click")
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = DeepFM(config, train_data._dataset)
    embedded = model.token_field_names + model.float_field_names + model.token_seq_field_names
    assert "click" not in embedded and "purchase" not in embedded
    assert "item_id" in embedded


def test_multitask_model_returns_per_task_losses_and_both_heads(make_config):
    config = make_config("ESMM")
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("ESMM")(config, train_data._dataset)
    batch = next(iter(train_data))
    losses = model.calculate_loss(batch)
    assert isinstance(losses, tuple) and len(losses) == 2
    model.eval()
    scores = model.predict_tasks(batch)
    p_click, p_purchase = scores["click"], scores["purchase"]
    assert torch.equal(scores["cvr"], model(batch)["cvr"])  # the separate pCVR head
    assert p_click.shape == p_purchase.shape == (len(batch),)
    assert (p_purchase <= p_click + 1e-7).all()  # ESMM: pCTCVR = pCTR * pCVR
    assert model.predict(batch).shape == (len(batch),)
