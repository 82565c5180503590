"""Name look-ups, default loading and RecBole's priority order."""

import pytest
import yaml

from recbole_cstwa.errors import ConfigError, UnknownModelError
from recbole_cstwa.registry import get_model


def test_plugin_model_then_recbole_model_then_clear_error():
    assert get_model("ESMM").__module__ == "recbole_cstwa.model.multitask.esmm"
    assert get_model("deepfm").__name__ == "DeepFM"  # RecBole's, any letter case
    with pytest.raises(UnknownModelError) as error:
        get_model("NoSuchModel")
    message = str(error.value)
    assert "NoSuchModel" in message and "ESMM" in message and "DeepFM" in message


def test_plugin_defaults_and_priority(make_config, tmp_path, monkeypatch):
    config = make_config("MMoE")
    assert config["num_experts"] == 8  # properties/model/MMoE.yaml
    assert config["tower_hidden_size"] == [128, 64, 32]  # properties/overall.yaml
    assert config["metrics"] == ["AUC", "LogLoss"] and config["valid_metric"] == "purchase_auc"

    config_file = tmp_path / "user.yaml"
    config_file.write_text(yaml.safe_dump({"num_experts": 4, "learning_rate": 0.01}))
    from recbole_cstwa.config import Config

    base = make_config("MMoE").final_config_dict
    file_only = {k: base[k] for k in ("dataset", "data_path", "benchmark_filename", "state")}
    file_only["data_path"] = file_only["data_path"].rsplit("/", 1)[0]
    monkeypatch.setattr("sys.argv", ["run", "--learning_rate=0.05"])
    config = Config(
        model="MMoE", config_file_list=[str(config_file)], config_dict={**file_only, "num_experts": 6}
    )
    assert config["num_experts"] == 6  # dict > file > plugin default
    assert config["learning_rate"] == 0.05  # command line > file


def test_valid_metric_direction_and_task(make_config):
    config = make_config("ESMM", valid_metric="purchase_logloss")
    assert config["valid_metric_bigger"] is False
    config = make_config("ESMM", valid_metric="AUC")
    assert config["valid_metric"] == "purchase_auc" and config["valid_metric_bigger"] is True
    config = make_config("DeepFM", LABEL_FIELD="click")
    assert config["valid_metric"] == "click_auc" and config["eval_tasks"] == {"click": "click"}
    with pytest.raises(ConfigError, match="needs metric"):
        make_config("ESMM", valid_metric="click_mae")


def test_label_field_errors(make_config):
    with pytest.raises(ConfigError, match="LABEL_FIELD must equal PURCHASE_FIELD"):
        make_config("ESMM", LABEL_FIELD="click")
    with pytest.raises(ConfigError, match="neither CLICK_FIELD"):
        make_config("DeepFM", LABEL_FIELD="position")
    with pytest.raises(ConfigError, match="invalid_purchase"):
        make_config("ESMM", invalid_purchase="keep")


def test_eval_tasks_are_listed_and_applied_per_model(make_config):
    config = make_config("CSTWA", eval_tasks="[click,purchase,cvr,ctcvr]")  # command-line form
    assert list(config["eval_tasks"]) == ["click", "purchase", "cvr", "ctcvr"]
    assert list(make_config("ESMM")["eval_tasks"]) == ["click", "purchase", "cvr", "cvr_all"]  # the default
    everything = ["click", "purchase", "cvr", "ctcvr", "cvr_all"]
    # cvr_all scores a pCVR, which a model trained on one label has not
    on_purchase = make_config("DeepFM", LABEL_FIELD="purchase", eval_tasks=everything)
    assert on_purchase["eval_tasks"] == {"purchase": "purchase", "cvr": "purchase", "ctcvr": "purchase"}
    on_click = make_config("DeepFM", LABEL_FIELD="click", eval_tasks=everything)
    assert on_click["eval_tasks"] == {"click": "click"}
    with pytest.raises(ConfigError, match="unknown task"):
        make_config("ESMM", eval_tasks=["click", "ctr"])


def test_each_run_writes_its_own_log_file(make_config, tmp_path, monkeypatch):
    """RecBole names the log by the second and the settings: two runs in one second shared a file."""
    import logging
    import os

    from recbole_cstwa.run_setup import init_run_logger

    root = logging.getLogger()
    monkeypatch.setattr(
        root, "handlers", []
    )  # as in a fresh process, where RecBole's handlers are the root's
    monkeypatch.setattr(root, "level", root.level)
    config = make_config("MLP", state="INFO")
    files = []
    for _ in range(2):
        init_run_logger(config)
        logging.getLogger().info("a line")
        (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        files.append(handler.baseFilename)
    assert files[0] != files[1] and all(os.path.getsize(path) > 0 for path in files)
    assert sorted(os.listdir("log/MLP")) == sorted(os.path.basename(path) for path in files)
    assert all(
        os.path.basename(path).endswith(f"-{os.getpid()}.log") or f"-{os.getpid()}-" in path for path in files
    )
    for handler in logging.getLogger().handlers:
        handler.close()
