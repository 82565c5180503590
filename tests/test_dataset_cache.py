"""The columnar data path: RecBole's ids, a pickle-free cache keyed by content, no unpickling."""

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, dataset_cache_dirs
from recbole.data.dataset import Dataset

from recbole_cstwa.data import create_dataset, data_preparation


class _Planted:
    """A pickle that creates ``marker`` when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def data_copy(tiny_data_path, tmp_path):
    """A copy of the tiny dataset for tests that edit its atomic files: without its truth files,
    which would no longer match the edited files (and stop the run)."""
    root = tmp_path / "data"
    shutil.copytree(f"{tiny_data_path}/{TINY}", root / TINY, ignore=shutil.ignore_patterns("*.truth.gz"))
    return root


def _file(root, suffix):
    return root / TINY / f"{TINY}.{suffix}"


def _assert_same(left, right):
    assert left.feat_name_list == right.feat_name_list
    for name in left.feat_name_list:
        a, b = getattr(left, name), getattr(right, name)
        assert a.columns == b.columns, name
        for field in a.columns:
            assert a[field].dtype == b[field].dtype, (name, field)
            floats = a[field].dtype.is_floating_point  # the truth of the training rows is NaN
            assert np.array_equal(a[field].numpy(), b[field].numpy(), equal_nan=floats), (name, field)
    assert left.field2type == right.field2type
    assert left.field2source == right.field2source
    assert left.field2seqlen == right.field2seqlen
    assert set(left.field2id_token) == set(right.field2id_token)
    for field, tokens in left.field2id_token.items():
        assert list(tokens) == list(right.field2id_token[field]), field
    assert left.field2token_id == right.field2token_id
    assert left.file_size_list == right.file_size_list


def _uncached(make_config, **overrides):
    dataset = create_dataset(make_config("ESMM", cache_dataset=False, **overrides))
    dataset._change_feat_format()
    return dataset


def test_cached_load_equals_fresh_load(make_config, caplog):
    caplog.set_level(logging.INFO)
    fresh = _uncached(make_config)
    config = make_config("ESMM")
    first = create_dataset(config)
    assert len(dataset_cache_dirs(config)) == 1
    assert "loaded from the cache" not in caplog.text
    cached = create_dataset(config)
    assert "loaded from the cache" in caplog.text
    _assert_same(fresh, first)
    _assert_same(fresh, cached)
    sizes = [[len(d) for d in ds.build()] for ds in (fresh, cached)]
    assert sizes[0] == sizes[1] == fresh.file_size_list
    # The cache is memory-mapped, yet batches come out as ``long`` ids, as torch needs.
    train, _, _ = data_preparation(config, cached)
    batch = next(iter(train))
    assert all(
        str(batch[field].dtype) == "torch.int64" for field in ("user_id", "item_id", "gender", "category")
    )
    assert str(batch["purchase"].dtype) == "torch.float32"


def test_ids_stay_small_while_resident(make_config):
    dataset = create_dataset(make_config("ESMM"))
    assert str(dataset.inter_feat["position"].dtype) == "torch.int8"
    assert str(dataset.inter_feat["user_id"].dtype) in ("torch.int16", "torch.int32")
    assert str(dataset.inter_feat["click"].dtype) == "torch.float32"
    assert str(dataset.get_user_feature()["gender"].dtype) == "torch.int64"


def test_changed_file_or_setting_invalidates_the_cache(make_config, data_copy, caplog):
    caplog.set_level(logging.INFO)
    config = make_config("ESMM", data_path=str(data_copy))
    before = create_dataset(config)
    path = _file(data_copy, "test.inter")
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.loc[0, "user_id:token"] = "a-new-user"  # one cell of one file
    frame.to_csv(path, sep="\t", index=False)
    caplog.clear()
    after = create_dataset(config)
    assert "loaded from the cache" not in caplog.text
    assert len(dataset_cache_dirs(config)) == 2
    assert len(after.field2id_token["user_id"]) == len(before.field2id_token["user_id"]) + 1

    caplog.clear()
    other = create_dataset(make_config("ESMM", data_path=str(data_copy), unload_col={"item": ["brand"]}))
    assert "loaded from the cache" not in caplog.text
    assert "brand" not in other.item_feat.columns
    assert len(dataset_cache_dirs(config)) == 3


@pytest.mark.parametrize("damage", ["truncated array", "foreign manifest", "garbage manifest"])
def test_damaged_cache_is_rebuilt_with_a_log_line(make_config, caplog, damage):
    config = make_config("ESMM")
    fresh = create_dataset(config)
    (directory,) = dataset_cache_dirs(config)
    directory = os.path.join(config["checkpoint_dir"], directory)
    if damage == "truncated array":
        path = os.path.join(directory, "inter_feat.user_id.npy")
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
    elif damage == "foreign manifest":
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as file:
            manifest = json.load(file)
        manifest["key"] = "0" * 24
        with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as file:
            json.dump(manifest, file)
    else:
        with open(os.path.join(directory, "manifest.json"), "wb") as file:
            file.write(pickle.dumps({"not": "json"}))
    caplog.set_level(logging.INFO)
    rebuilt = create_dataset(config)
    assert "cannot be used" in caplog.text and "rebuilding it" in caplog.text
    _assert_same(fresh, rebuilt)
    caplog.clear()
    _assert_same(fresh, create_dataset(config))  # the rewritten cache loads again
    assert "loaded from the cache" in caplog.text


def test_failed_cache_write_warns_and_goes_on(make_config, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    dataset = create_dataset(make_config("ESMM", dataset_cache_dir=str(blocker / "cache")))
    assert len(dataset) > 0
    assert "Could not write the dataset cache" in caplog.text


def test_nothing_is_unpickled(run_tiny, tiny_data_path, tmp_path):
    """RecBole's default dataset and dataloader files, planted as code-running pickles."""
    marker = tmp_path / "marker"
    saved = tmp_path / "saved"
    saved.mkdir(exist_ok=True)
    planted = [saved / f"{TINY}-MultiTaskDataset.pth", saved / f"{TINY}-for-MLP-dataloader.pth"]
    for path in planted:
        path.write_bytes(pickle.dumps(_Planted(str(marker))))
    result = run_tiny("MLP", save_dataset=True, save_dataloaders=True)
    assert result["test_result"]
    run_tiny("MLP")  # a second run, from the plugin's cache
    assert not marker.exists()
    with open(planted[0], "rb") as file:  # the planted file does run code when unpickled
        pickle.load(file)
    assert marker.exists()


@pytest.mark.parametrize("block_bytes", [1 << 24, 4096])
def test_ids_equal_recbole_remapping(make_config, data_copy, monkeypatch, block_bytes):
    """RecBole's own Dataset on the same files: ids missing from and extra in .user, tokens that
    are not plain integers (leading zeros, letters) beside integer ones, files read in one block
    or in many."""
    monkeypatch.setattr("recbole_cstwa.data.atomic_files.READ_BLOCK_BYTES", block_bytes)
    inter = pd.read_csv(_file(data_copy, "test.inter"), sep="\t", dtype=str)
    inter.loc[:2, "item_id:token"] = "0" + inter.loc[:2, "item_id:token"]  # "012" is not "12"
    inter.loc[5:9, "user_category:token"] = ["x", "y", "x", "", "-0"]
    inter.loc[20, "item_id:token"] = "+" + inter.loc[21, "item_id:token"]
    inter.to_csv(_file(data_copy, "test.inter"), sep="\t", index=False)
    user = pd.read_csv(_file(data_copy, "user"), sep="\t", dtype=str)
    user = user.iloc[5:]  # users of the .inter files not listed in .user
    extra = user.iloc[:3].copy()
    extra["user_id:token"] = ["only-in-user-1", "only-in-user-2", "only-in-user-3"]
    user = pd.concat([extra, user])
    user.iloc[7, 1] = ""  # a missing token cell: [PAD]
    user.to_csv(_file(data_copy, "user"), sep="\t", index=False)
    config = make_config("ESMM", data_path=str(data_copy), cache_dataset=False)
    ours = create_dataset(config)
    reference = Dataset(config)
    for name in reference.feat_name_list:
        mine, theirs = getattr(ours, name), getattr(reference, name)
        assert list(mine.columns) == list(theirs.columns), name
        for field in theirs.columns:
            assert np.array_equal(
                mine[field].to_numpy().astype(float), theirs[field].to_numpy().astype(float)
            ), (name, field)
    for field, tokens in reference.field2id_token.items():
        assert list(ours.field2id_token[field]) == list(tokens), field


def test_duplicate_and_missing_ids_are_reported_once(make_config, data_copy, caplog):
    user = pd.read_csv(_file(data_copy, "user"), sep="\t", dtype=str)
    first_ids = user["user_id:token"].iloc[:2].tolist()
    changed = user.iloc[:2].copy()
    changed.iloc[:, 1] = "999999"  # a second row for an id: RecBole keeps the first
    user = pd.concat([user.iloc[4:], changed, user.iloc[:2]])
    user.to_csv(_file(data_copy, "user"), sep="\t", index=False)
    config = make_config("ESMM", data_path=str(data_copy), cache_dataset=False)
    dataset = create_dataset(config)
    duplicate_lines = [line for line in caplog.messages if "repeat a user_id" in line]
    assert len(duplicate_lines) == 1
    assert "2 rows" in duplicate_lines[0] and TINY + ".user" in duplicate_lines[0]
    assert first_ids[0] in duplicate_lines[0]
    # the first row of each id is kept: the changed rows came first
    column = user.columns[1].split(":")[0]
    kept = dataset.user_feat[column].to_numpy()[dataset.field2token_id["user_id"][first_ids[0]]]
    assert dataset.field2id_token[column][kept] == "999999"
    missing_lines = [line for line in caplog.messages if "not listed in the .user file" in line]
    assert len(missing_lines) == 1
    inter = pd.concat(
        pd.read_csv(_file(data_copy, f"{s}.inter"), sep="\t", dtype=str) for s in ("train", "valid", "test")
    )
    missing = set(inter["user_id:token"]) - set(user["user_id:token"])
    assert missing  # users 3 and 4 of the file were removed above
    rows = int(inter["user_id:token"].isin(missing).sum())
    assert missing_lines[0].startswith(f"{len(missing)} user_ids of {rows} impressions")


def test_builtin_model_runs_through_the_cached_data_path(run_tiny, caplog):
    """RecBole's DeepFM reads the same small-integer columns (as ``long`` batches)."""
    first = run_tiny("DeepFM", state="INFO")
    caplog.set_level(logging.INFO)
    second = run_tiny("DeepFM", state="INFO")
    assert "loaded from the cache" in caplog.text
    assert first["test_result"] == second["test_result"]
    assert 0.0 <= second["test_result"]["purchase_auc"] <= 1.0


def test_one_file_dataset_equals_recbole_and_reports_filtered_rows(make_config, data_copy, caplog):
    """The single ``.inter`` path (RecBole's filtering runs): same ids as RecBole, and the
    impressions RecBole drops for users missing from .user are counted once."""
    inter = pd.read_csv(_file(data_copy, "train.inter"), sep="\t", dtype=str)
    inter.to_csv(_file(data_copy, "inter"), sep="\t", index=False)
    user = pd.read_csv(_file(data_copy, "user"), sep="\t", dtype=str)
    kept_users = user.iloc[3:]
    kept_users.to_csv(_file(data_copy, "user"), sep="\t", index=False)
    config = make_config("ESMM", data_path=str(data_copy), benchmark_filename=None, cache_dataset=False)
    ours = create_dataset(config)
    reference = Dataset(config)
    dropped = int((~inter["user_id:token"].isin(kept_users["user_id:token"])).sum())
    assert dropped > 0
    lines = [line for line in caplog.messages if "is not listed in the .user / .item file" in line]
    assert len(lines) == 1 and lines[0].startswith(f"Dropped {dropped} of {len(inter)} impressions")
    for name in reference.feat_name_list:
        mine, theirs = getattr(ours, name), getattr(reference, name)
        for field in theirs.columns:
            assert np.array_equal(
                mine[field].to_numpy().astype(float), theirs[field].to_numpy().astype(float)
            ), (name, field)
    for field, tokens in reference.field2id_token.items():
        assert list(ours.field2id_token[field]) == list(tokens), field


def test_compact_loaders_give_recbole_batches(make_config):
    """Same batches, in the same shuffled order over epochs, as RecBole's own dataloaders."""
    from recbole.data.utils import data_preparation as recbole_data_preparation

    config = make_config("ESMM", train_batch_size=700)
    ours = data_preparation(config, create_dataset(config))
    theirs = recbole_data_preparation(config, create_dataset(config))
    assert type(ours[0]).__name__ == "CompactTrainDataLoader"
    assert type(ours[0].batch_sampler).__name__ == "_IndexBatches"
    for mine, reference in zip(ours, theirs):
        for _ in range(2):  # two epochs: the shuffle generator advances as RecBole's does
            batches = list(mine)
            expected = list(reference)
            assert len(batches) == len(expected) == len(mine)
            for a, b in zip(batches, expected):
                _assert_same_batch(a, b)


def _same_tensor(a, b):
    """Equal values, NaN equal to NaN (the training rows' truth)."""
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def _assert_same_batch(a, b):
    if isinstance(a, tuple):  # evaluation batches: (interaction, row index, ...)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_batch(x, y)
    elif isinstance(a, torch.Tensor):
        assert _same_tensor(a, b)
    elif a is None:
        assert b is None
    else:
        assert a.columns == b.columns
        for field in a.columns:
            assert _same_tensor(a[field], b[field]), field
