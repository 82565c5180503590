"""Every model runs one epoch end to end and reports both tasks' metrics."""

import math
import os
import sys

import pytest
import torch
from conftest import REPOSITORY
from recbole.model.context_aware_recommender import DeepFM

import recbole_cstwa.model.multitask as multitask_models
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.quick_start import run_recbole_cstwa
from recbole_cstwa.registry import get_model, plugin_model_names

#: Each task's metrics on data with truth: RecBole's (``metrics``), calibration, the truth.
TASK_METRICS = ("auc", "logloss", "pcoc", "ece", "truth_kl", "truth_auc", "truth_ece")


def task_keys(*tasks):
    return {f"{task}_{metric}" for task in tasks for metric in TASK_METRICS}


#: The default eval_tasks: click, purchase, cvr (purchase over the clicked rows) and cvr_all (the
#: pCVR over every row); the tiny dataset has truth files, so the truth metrics are there.
TWO_TASK_KEYS = task_keys("click", "purchase", "cvr", "cvr_all")
#: Models with a pCVR head; the others' pCVR is the DIVISION pCTCVR / pCTR, whose clip is counted.
CVR_HEAD_MODELS = ("ESMM", "ESCM2", "DCMT", "DDPO", "NISE")
DIVISION_KEYS = {"cvr_truth_clipped", "cvr_all_truth_clipped"}


def _check_metrics(result, keys):
    for part in ("best_valid_result", "test_result"):
        found = result[part]
        # the cold-start slice (users or items unseen in training): every metric again
        cold = {metric for metric in found if metric.endswith("_cold")} | ({"cold_rows"} & set(found))
        assert set(found) - cold == keys
        assert not cold or cold == {f"{metric}_cold" for metric in keys} | {"cold_rows"}
        for metric, value in found.items():
            if metric in cold:
                continue  # a few rows: NaN where the slice holds one class
            assert math.isfinite(value), (metric, value)
            if metric.endswith(("auc", "clipped")):
                assert 0.0 <= value <= 1.0
            else:
                assert value > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("model", plugin_model_names())
def test_plugin_model_one_epoch(run_tiny, model):
    result = run_tiny(model)
    assert result["model"] == model
    _check_metrics(result, TWO_TASK_KEYS | (set() if model in CVR_HEAD_MODELS else DIVISION_KEYS))
    assert result["best_valid_score"] == result["best_valid_result"]["purchase_auc"]
    # every training epoch is timed, whichever epoch loop the trainer runs
    assert len(result["epoch_seconds"]) == result["epochs_trained"] and min(result["epoch_seconds"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", ["click", "purchase"])
def test_recbole_builtin_model_on_either_label(run_tiny, label):
    result = run_tiny("DeepFM", LABEL_FIELD=label)
    extra = task_keys("cvr") if label == "purchase" else set()  # cvr needs a purchase score
    _check_metrics(result, task_keys(label) | extra)  # no cvr_all: such a model has no pCVR
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


def _readme_example_model():
    """The Python block of the README's "Adding a model" section, as written there."""
    with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    section = readme[readme.index("## Adding a model") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start) + 1]


@pytest.mark.slow
def test_the_readme_example_model_trains_one_epoch_on_the_embedded_dataset(tmp_path, monkeypatch):
    """The README's worked example, saved as the file it says to add, is found by name, trains
    one epoch on the embedded dataset and learns."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "sharedbottom.py").write_text(_readme_example_model(), encoding="utf-8")
    monkeypatch.setattr(multitask_models, "__path__", [*multitask_models.__path__, str(models)])
    try:
        assert "SharedBottom" in plugin_model_names()
        settings = {
            "epochs": 1,
            "checkpoint_dir": str(tmp_path / "saved"),
            "show_progress": False,
            "state": "ERROR",
        }
        result = run_recbole_cstwa(model="SharedBottom", config_dict=settings)
        model_class = get_model("SharedBottom")
    finally:  # the example leaves no trace in the package for later tests
        sys.modules.pop("recbole_cstwa.model.multitask.sharedbottom", None)
        vars(multitask_models).pop("sharedbottom", None)
    assert model_class.__module__ == "recbole_cstwa.model.multitask.sharedbottom"
    assert result["model"] == "SharedBottom" and result["epochs_trained"] == 1
    _check_metrics(result, TWO_TASK_KEYS | DIVISION_KEYS)
    # One epoch on the embedded dataset is enough to rank purchases well above chance.
    assert result["test_result"]["purchase_auc"] > 0.55 and result["test_result"]["click_auc"] > 0.55
