"""The dataset YAML found by convention, LABEL_FIELD following PURCHASE_FIELD, and the checks and
logs that name a bad dataset/settings pair before any training work."""

import logging

import pytest

from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset
from recbole_cstwa.data.checks import check_dataset_settings
from recbole_cstwa.errors import ConfigError, DataFormatError
from recbole_cstwa.quick_start import run_recbole_cstwa
from recbole_cstwa.tools.aliexpress_sample import write_sample
from recbole_cstwa.tools.importer import import_dataset

# RecBole 1.2.1's own chained fillna warns under pandas 2.3.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def aliexpress_path(tmp_path_factory):
    """An AliExpress-shaped dataset (no ids, 16 categorical + 63 numerical context fields)."""
    root = tmp_path_factory.mktemp("ae")
    paths = write_sample(root / "raw", rows=1500, seed=3)
    import_dataset(
        root / "data",
        "ae",
        "click",
        "conversion",
        train=paths["train"],
        test=paths["test"],
        context_fields=["categorical_*", "numerical_*"],
        numerical=["numerical_*"],
        valid_ratio=0.2,
    )
    return str(root / "data")


def settings(data_path, tmp_path, **overrides):
    return {
        "data_path": data_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "state": "INFO",
        "show_progress": False,
        "epochs": 1,
        "train_batch_size": 500,
        **overrides,
    }


def test_dataset_yaml_is_found_by_convention_between_defaults_and_user_files(aliexpress_path, tmp_path):
    config = Config(model="MLP", dataset="ae", config_dict=settings(aliexpress_path, tmp_path))
    # The importer's YAML: labels, no ids, splits, numerical fields; LABEL_FIELD follows PURCHASE_FIELD.
    assert config["PURCHASE_FIELD"] == "conversion" and config["LABEL_FIELD"] == "conversion"
    assert config["USER_ID_FIELD"] is None and config["ITEM_ID_FIELD"] is None
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert len(config["numerical_features"]) == 63
    assert config["eval_tasks"] == {
        "click": "click",
        "purchase": "conversion",
        "cvr": "conversion",
        "cvr_all": "conversion",
    }

    # Priority: the dataset YAML beats the plugin's defaults, a user's config file beats it.
    yaml_path = tmp_path / "ds"
    import shutil

    shutil.copytree(aliexpress_path, yaml_path)
    with open(yaml_path / "ae" / "ae.yaml", "a") as file:
        file.write("embedding_size: 7\n")
    config = Config(model="MLP", dataset="ae", config_dict=settings(str(yaml_path), tmp_path))
    assert config["embedding_size"] == 7  # properties/overall.yaml says 5
    user_file = tmp_path / "mine.yaml"
    user_file.write_text("embedding_size: 9\n")
    config = Config(
        model="MLP",
        dataset="ae",
        config_file_list=[str(user_file)],
        config_dict=settings(str(yaml_path), tmp_path),
    )
    assert config["embedding_size"] == 9


def test_label_field_follows_purchase_field_unless_set(make_config):
    config = make_config("ESMM", PURCHASE_FIELD="conversion")
    assert config["LABEL_FIELD"] == "conversion"
    config = make_config("DeepFM", PURCHASE_FIELD="conversion")
    assert config["eval_tasks"] == {"purchase": "conversion", "cvr": "conversion"}
    config = make_config("DeepFM", PURCHASE_FIELD="conversion", LABEL_FIELD="click")
    assert config["eval_tasks"] == {"click": "click"}
    with pytest.raises(ConfigError, match="LABEL_FIELD must equal PURCHASE_FIELD"):
        make_config("ESMM", PURCHASE_FIELD="conversion", LABEL_FIELD="click")


@pytest.mark.parametrize("key", ["USER_ID_FIELD", "ITEM_ID_FIELD"])
def test_missing_id_column_names_the_fix(aliexpress_path, tmp_path, key):
    overrides = {key: key.split("_")[0].lower() + "_id"}
    with pytest.raises(DataFormatError, match=rf"ae\.train\.inter\] has no column .* `{key}: ~`"):
        run_recbole_cstwa(
            model="MLP", dataset="ae", config_dict=settings(aliexpress_path, tmp_path, **overrides)
        )


def test_cstwa_without_ids_says_how_to_turn_the_structure_migrator_off(aliexpress_path, tmp_path):
    with pytest.raises(ConfigError, match=r"Structure Migrator .* needs user and item ids.*use_sm: False"):
        run_recbole_cstwa(model="CSTWA", dataset="ae", config_dict=settings(aliexpress_path, tmp_path))
    config = Config(
        model="CSTWA", dataset="ae", config_dict=settings(aliexpress_path, tmp_path, use_sm=False)
    )
    check_dataset_settings(config)  # no error


def test_unlisted_float_columns_get_a_warning(aliexpress_path, tmp_path, caplog):
    config = Config(
        model="MLP",
        dataset="ae",
        config_dict=settings(aliexpress_path, tmp_path, numerical_features=["numerical_1"]),
    )
    with caplog.at_level(logging.WARNING):
        check_dataset_settings(config)
    (message,) = [r.getMessage() for r in caplog.records if "float columns" in r.getMessage()]
    assert "['numerical_2'," in message and "(62)" in message and "numerical_features" in message
    caplog.clear()
    config = Config(model="MLP", dataset="ae", config_dict=settings(aliexpress_path, tmp_path))
    with caplog.at_level(logging.WARNING):
        check_dataset_settings(config)
    assert not [r for r in caplog.records if "float columns" in r.getMessage()]


def test_model_logs_groups_width_and_warns_on_many_mean_pooled_fields(aliexpress_path, tmp_path, caplog):
    from recbole_cstwa.model.multitask.mlp import MLP

    for pooling, width, warned in (("mean", 5, True), ("concat", 79 * 5, False)):
        config = Config(
            model="MLP",
            dataset="ae",
            config_dict=settings(aliexpress_path, tmp_path, context_pooling=pooling),
        )
        dataset = create_dataset(config)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            MLP(config, dataset)
        messages = [r.getMessage() for r in caplog.records]
        assert "MLP user fields (0): []" in messages and "MLP item fields (0): []" in messages
        assert any(m.startswith("MLP context fields (79): [categorical_1:token,") for m in messages)
        assert f"MLP input width: {width} (embedding_size 5, context_pooling {pooling})" in messages
        assert any("averages 79 context fields" in m and "concat" in m for m in messages) == warned


@pytest.mark.parametrize("valid_labels", [["1,0", "0,0", "1,0"], ["0,0", "0,0", "0,0"]])
def test_valid_split_without_purchases_or_clicks_is_refused_before_training(tmp_path, valid_labels):
    header = "f1,click,conversion\n"
    train = "".join(f"a{i % 3},{i % 2},{int(i % 4 == 1)}\n" for i in range(40))
    valid = "".join(f"a{i},{labels}\n" for i, labels in enumerate(valid_labels))
    test = "a1,1,1\na2,0,0\na0,1,0\n"
    files = {}
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        files[split] = tmp_path / f"{split}.csv"
        files[split].write_text(header + text)
    summary = import_dataset(
        tmp_path / "data",
        "nv",
        "click",
        "conversion",
        context_fields=["f1"],
        **{split: str(path) for split, path in files.items()},
    )
    assert summary["warnings"]  # the importer already says so
    clicks = sum(labels.startswith("1") for labels in valid_labels)
    with pytest.raises(
        DataFormatError,
        match=(
            rf"valid split .* holds 3 impressions with {clicks} clicks, 0 purchases: valid_metric "
            r"\[purchase_auc\] .* undefined .* importer.* or choose another valid_metric"
        ),
    ):
        run_recbole_cstwa(model="MLP", dataset="nv", config_dict=settings(str(tmp_path / "data"), tmp_path))
    assert not list((tmp_path / "saved").glob("*.pth"))  # nothing trained (the dataset cache may be there)


def test_cvr_valid_metric_on_a_split_where_every_click_is_bought_is_refused(tiny_data_path, tmp_path):
    """With eval_tasks [cvr] only the purchase label was counted: the run trained with NaN scores
    and ended in FileNotFoundError for the checkpoint."""
    import shutil

    from conftest import TINY, tiny_config

    shutil.copytree(f"{tiny_data_path}/{TINY}", tmp_path / "data" / TINY)
    path = tmp_path / "data" / TINY / f"{TINY}.valid.inter"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join([lines[0]] + [line.rsplit("\t", 1)[0] + "\t" + line.split("\t")[-2] for line in lines[1:]])
        + "\n"
    )
    config = tiny_config(
        str(tmp_path / "data"),
        tmp_path,
        eval_tasks=["cvr"],
        valid_metric="cvr_auc",
        cache_dataset=False,
        truth_metrics=False,  # the edited file no longer matches its truth file
    )
    with pytest.raises(
        DataFormatError,
        match=(
            r"valid split .* holds 400 impressions with (\d+) clicks, \1 purchases \(cvr is scored on the \1 clicked "
            r"rows\): valid_metric \[cvr_auc\] .* undefined"
        ),
    ):
        run_recbole_cstwa(model="ESMM", config_dict=config)
    assert not list((tmp_path / "saved").glob("*.pth"))
