"""The README's Python block and its sample config file work as written (on the tiny dataset,
one epoch). The README's model example is trained by ``tests/test_models.py``."""

import os
import re

import pytest
import torch
import yaml
from conftest import REPOSITORY, TINY, tiny_config

import recbole_cstwa.quick_start as quick_start
from recbole_cstwa.config import Config

SAMPLE_CONFIG = os.path.join(REPOSITORY, "examples", "esmm.yaml")


def readme_block(section, language):
    """The first ``language`` code block after the README heading ``section``, as written there."""
    with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    text = readme[readme.index(f"\n{section}\n") :]
    start = text.index(f"```{language}\n") + len(f"```{language}\n")
    return text[start : text.index("```", start)]


@pytest.mark.slow
def test_the_readme_python_block_trains_loads_and_scores(tiny_data_path, tmp_path, monkeypatch):
    """The block runs as written, its run sent to the tiny dataset for one epoch: the result has
    the keys it names, ``load_data_and_model`` gives the model back and it scores in eval mode."""
    block = readme_block("## From Python", "python")
    run = quick_start.run_recbole_cstwa

    def on_the_tiny_dataset(model=None, config_dict=None, **arguments):
        settings = {**(config_dict or {}), **tiny_config(tiny_data_path, tmp_path)}
        return run(model=model, config_dict=settings, **arguments)

    monkeypatch.setattr(quick_start, "run_recbole_cstwa", on_the_tiny_dataset)
    namespace = {}
    exec(compile(block, "README.md (From Python)", "exec"), namespace)

    result = namespace["result"]
    assert result["model"] == "ESMM" and result["epochs_trained"] == 1
    assert {"click_auc", "purchase_auc", "cvr_logloss"} <= set(result["test_result"])
    named = re.search(r"# other keys: (.*)", block).group(1).split(", ")
    assert named and set(named) <= set(result), set(named) - set(result)
    assert os.path.isfile(result["model_file"])

    model, interaction, scores = namespace["model"], namespace["interaction"], namespace["scores"]
    assert namespace["config"]["dataset"] == TINY
    assert not model.training  # the block's model.eval(): load_data_and_model returns it training
    assert set(scores) == {"click", "purchase", "cvr"}
    for score in scores.values():
        assert score.shape == (len(interaction),) and ((score >= 0) & (score <= 1)).all()
    with torch.no_grad():  # in eval mode the scores are the model's, call after call
        assert torch.equal(model.predict_tasks(interaction)["purchase"], scores["purchase"])


def test_the_readme_shows_the_sample_config_file_as_committed():
    with open(SAMPLE_CONFIG, encoding="utf-8") as file:
        sample = file.read()
    assert readme_block("## Quick start", "yaml") == sample
    command = "python run_recbole_cstwa.py --model=ESMM --config_files=examples/esmm.yaml"
    assert sample.startswith(f"# {command}\n")
    with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as file:
        assert f"{command} --epochs=2" in file.read()  # the README's command: the file and an override


def test_the_sample_config_file_sets_what_it_says(tiny_data_path):
    with open(SAMPLE_CONFIG, encoding="utf-8") as file:
        settings = yaml.safe_load(file)
    assert settings  # one setting at least, every one read by Config
    data = {"dataset": TINY, "data_path": tiny_data_path, "benchmark_filename": ["train", "valid", "test"]}
    config = Config(model="ESMM", config_file_list=[SAMPLE_CONFIG], config_dict=data)
    for key, value in settings.items():
        assert config[key] == value, key
    # the command line (here the config dict) still wins over the file
    config = Config(model="ESMM", config_file_list=[SAMPLE_CONFIG], config_dict={**data, "epochs": 2})
    assert config["epochs"] == 2


@pytest.mark.slow
def test_the_sample_config_file_trains_one_epoch(tiny_data_path, tmp_path):
    settings = tiny_config(tiny_data_path, tmp_path)
    del settings["train_batch_size"]  # the file's
    result = quick_start.run_recbole_cstwa(
        model="ESMM", config_file_list=[SAMPLE_CONFIG], config_dict=settings
    )
    assert result["model"] == "ESMM" and result["epochs_trained"] == 1
    assert result["best_valid_score"] == result["best_valid_result"]["purchase_auc"]
