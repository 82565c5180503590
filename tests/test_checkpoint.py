"""Checkpoints hold only tensors and plain data and load with ``weights_only=True``."""

import glob

import pytest
import torch

from recbole_cstwa.checkpoint import CHECKPOINT_KEYS, load_checkpoint


@pytest.mark.slow
def test_checkpoint_round_trip_under_weights_only(run_tiny, tmp_path):
    result = run_tiny("MMoE", epochs=2)
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "MMoE-*.pth"))
    # Plain torch.load with weights_only=True: no pickled objects inside.
    state = torch.load(checkpoint_file, weights_only=True)
    assert set(state) == set(CHECKPOINT_KEYS)
    assert state["model"] == "MMoE" and state["best_valid_score"] == result["best_valid_score"]
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())


@pytest.mark.slow
def test_builtin_model_checkpoint_round_trip(run_tiny, tmp_path):
    run_tiny("WideDeep", LABEL_FIELD="click")
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "WideDeep-*.pth"))
    assert "state_dict" in torch.load(checkpoint_file, weights_only=True)


@pytest.mark.slow
def test_reloaded_model_gives_the_same_test_result(make_config, run_tiny, tmp_path):
    from recbole_cstwa.data import create_dataset, data_preparation
    from recbole_cstwa.registry import get_model, get_trainer

    result = run_tiny("ESMM", epochs=2)
    (checkpoint_file,) = glob.glob(str(tmp_path / "saved" / "ESMM-*.pth"))
    config = make_config("ESMM")
    _, _, test_data = data_preparation(config, create_dataset(config))
    model = get_model("ESMM")(config, test_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "ESMM")(config, model)
    assert trainer.evaluate(test_data, model_file=checkpoint_file) == result["test_result"]

    # Resuming continues after the saved epoch, with the saved best score.
    saved = torch.load(checkpoint_file, weights_only=True)
    trainer.resume_checkpoint(checkpoint_file)
    assert trainer.start_epoch == saved["epoch"] + 1
    assert trainer.best_valid_score == result["best_valid_score"]


def test_a_recbole_style_checkpoint_is_refused(make_config, tmp_path):
    # RecBole's own trainer pickles its Config object into the checkpoint.
    path = tmp_path / "recbole-style.pth"
    torch.save({"config": make_config("ESMM"), "state_dict": {}}, path)
    with pytest.raises(ValueError, match="is not loaded"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")
