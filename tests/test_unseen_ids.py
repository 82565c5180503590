"""Ids rare or unseen in training (``min_count``): one trained out-of-vocabulary row a token field,
used for rare training ids, for ids seen only in the validation / test split and for tokens unseen
at predict time (eager and exported); absent with ``min_count: 0``; kept by checkpoints."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from recbole_cstwa.tools.generator import generate

COLD = "tiny-cold"


@pytest.fixture(scope="module")
def cold_data_path(tmp_path_factory):
    """A 4,000-impression dataset whose validation and test splits hold users and items held out
    of training (the generator's cold start)."""
    root = tmp_path_factory.mktemp("cold")
    generate(root, name=COLD, n_impressions=4000, cvr=0.3, seed=11, new_user_share=0.2, new_item_share=0.2)
    return str(root)


def cold_meta(data_path):
    with open(os.path.join(data_path, COLD, f"{COLD}.meta.json"), encoding="utf-8") as file:
        return json.load(file)


def prepared(data_path, tmp_path, model="MLP", **settings):
    """``(config, train_data, valid_data, test_data)`` of the cold dataset."""
    from recbole_cstwa.config import Config
    from recbole_cstwa.data import create_dataset, data_preparation

    config = Config(
        model=model, config_dict={**tiny_config(data_path, tmp_path), "dataset": COLD, **settings}
    )
    return (config, *data_preparation(config, create_dataset(config)))


def built(data_path, tmp_path, model="MLP", **settings):
    from recbole_cstwa.registry import get_model

    config, train_data, valid_data, test_data = prepared(data_path, tmp_path, model, **settings)
    torch.manual_seed(0)
    return get_model(model)(config, train_data._dataset), train_data, valid_data, test_data


def training_counts(train_data, field):
    dataset = train_data._dataset
    return torch.bincount(dataset.inter_feat[field].long(), minlength=dataset.num(field))


def test_rare_and_held_out_ids_share_the_fields_out_of_vocabulary_row(cold_data_path, tmp_path):
    from recbole_cstwa.model.layers import token_counts

    model, train_data, _, test_data = built(cold_data_path, tmp_path, min_count=3)
    embedding = model.click_embedding
    dataset = train_data._dataset
    for field in ("user_id", "item_id", "position"):
        counts = training_counts(train_data, field)
        ids = torch.arange(dataset.num(field))
        rows = embedding.rows_of(field, ids)
        oov = embedding.oov_row(field)
        rare = (counts < 3) & (ids > 0)
        assert torch.equal(rows == oov, rare)  # rare ids, and only they, read the OOV row
        own = rows[~rare]
        assert len(torch.unique(own)) == len(own)  # [PAD] and every frequent id: a row of its own
        unseen = embedding.rows_of(field, torch.tensor([dataset.num(field)]))
        assert int(unseen) == oov  # the predictor's unseen index: the same row
    # The table holds the frequent ids, [PAD] and one OOV row a field only.
    fields = [
        field for group in model.field_groups.values() for field, kind in group if kind.value == "token"
    ]
    counts = token_counts(dataset, fields)
    expected_rows = sum(2 + int((counts[field][1:] >= 3).sum()) for field in fields)
    assert embedding.token_table.weight.shape[0] == expected_rows

    # Users held out of training appear in the test split (ids counted 0 times): evaluated with
    # the OOV vector and their own features (they are in the vocabulary and the .user table).
    held_out = {str(user) for user in cold_meta(cold_data_path)["cold_start"]["new_users"]["ids"]}
    tokens = dataset.field2id_token["user_id"]
    test_users = test_data._dataset.inter_feat["user_id"]
    cold_rows = torch.tensor([tokens[int(user)] in held_out for user in test_users])
    assert cold_rows.any()
    batch = test_data._dataset[torch.nonzero(cold_rows).flatten()[:50]]
    model.eval()
    vectors, present = embedding.lookup(batch)["user"]
    user_column = [field for field, _ in model.field_groups["user"]].index("user_id")
    features = [column for column in range(present.shape[1]) if column != user_column]
    oov_vector = embedding.token_table.weight[embedding.oov_row("user_id")]
    assert torch.equal(vectors[:, user_column], oov_vector.expand(len(batch), -1))
    assert present.all()  # an out-of-vocabulary user is present, not [PAD], and so are its features
    # A user unseen at predict time (the unseen index) has no features: [PAD] rows, absent.
    unseen = {"user_id": torch.full((3,), dataset.num("user_id"))}
    vectors, present = embedding(unseen, "user")
    pad_rows = embedding.token_table.weight[embedding._user_pad_rows.long()]
    assert torch.equal(vectors[:, user_column], oov_vector.expand(3, -1))
    assert not present[:, features].any()
    assert torch.equal(vectors[:, features], pad_rows[features].expand(3, -1, -1))


def test_rare_users_train_as_unknown_users_in_half_their_impressions(cold_data_path, tmp_path):
    """In training (with gradients) a rare user is shown as an unknown one (OOV id, no features)
    in about half its rows, drawn each step; a frequent one never; never outside training."""
    from recbole_cstwa.model.layers import UNKNOWN_SHARE

    model, train_data, _, _ = built(cold_data_path, tmp_path, min_count=20)
    embedding = model.click_embedding
    counts = training_counts(train_data, "user_id")
    users = torch.arange(1, len(counts)).repeat(20)
    rare = counts[users] < 20
    assert rare.any() and (~rare).any()
    interaction = {"user_id": users}
    _, present = embedding(interaction, "user")
    unknown = ~present[:, 1:].any(dim=1)  # no feature present
    assert not unknown[~rare].any()
    assert abs(unknown[rare].float().mean().item() - UNKNOWN_SHARE) < 0.05
    _, again = embedding(interaction, "user")
    assert not torch.equal(again, present)  # drawn again each step
    with torch.no_grad():
        assert embedding(interaction, "user")[1].all()  # no gradient (CSTWA's graph stage): features
    model.eval()
    assert embedding(interaction, "user")[1].all()


def test_a_user_feature_counts_the_training_impressions_of_its_users(cold_data_path, tmp_path):
    from recbole_cstwa.model.layers import token_counts

    _, train_data, _, _ = prepared(cold_data_path, tmp_path)
    dataset = train_data._dataset
    counts = token_counts(dataset, ["gender", "user_id"])
    users = dataset.inter_feat["user_id"].long()
    genders = dataset.user_feat["gender"].long()[users]
    assert torch.equal(counts["gender"], torch.bincount(genders, minlength=dataset.num("gender")))
    assert int(counts["user_id"].sum()) == len(dataset)


def test_the_out_of_vocabulary_row_is_trained(cold_data_path, tmp_path):
    from recbole_cstwa.trainer import MultiTaskTrainer

    model, train_data, valid_data, _ = built(
        cold_data_path, tmp_path, min_count=20
    )  # rare users too in this small data
    embedding = model.purchase_embedding
    before = embedding.token_table.weight.detach().clone()
    trainer = MultiTaskTrainer(model.config, model)
    trainer._train_epoch(train_data, 0)
    after = embedding.token_table.weight.detach()
    for field in ("user_id", "item_id"):
        row = embedding.oov_row(field)
        assert not torch.equal(before[row], after[row]), field
    # so are the [PAD] rows of the user's features: the unknown users' (rare ones, half the time)
    pad_rows = embedding._user_pad_rows.long()[1:]
    assert not torch.equal(before[pad_rows], after[pad_rows])


def test_min_count_zero_keeps_one_row_an_id_and_no_buffer(cold_data_path, tmp_path):
    model, train_data, _, _ = built(cold_data_path, tmp_path, min_count=0)
    embedding = model.click_embedding
    dataset = train_data._dataset
    fields = [
        field for group in model.field_groups.values() for field, kind in group if kind.value == "token"
    ]
    assert embedding.token_rows is None and embedding.oov_row("user_id") is None
    assert embedding.token_table.weight.shape[0] == sum(dataset.num(field) for field in fields)
    assert not any("token_rows" in key for key in model.state_dict())
    start = embedding.token_offset["item_id"]
    assert torch.equal(embedding.rows_of("item_id", torch.arange(5)), torch.arange(5) + start)


def test_the_index_tables_give_the_joined_columns_look_up(cold_data_path, tmp_path):
    """A user's (item's) token fields looked up by id equal the look-up of the columns the data
    loader joins; sparse and dense, with and without min_count."""
    for settings in ({"min_count": 0}, {"min_count": 3}, {"min_count": 3, "embedding_update": "dense"}):
        model, train_data, _, _ = built(cold_data_path, tmp_path, **settings)
        embedding = model.click_embedding
        assert set(embedding._entity_field) == {"user", "item"}
        batch = next(iter(train_data))
        torch.manual_seed(1)  # the same draws of unknown rare users in both look-ups
        by_id = embedding.lookup(batch)
        entity_field, embedding._entity_field = embedding._entity_field, {}
        torch.manual_seed(1)
        by_columns = embedding.lookup(batch)
        embedding._entity_field = entity_field
        for group in by_id:
            assert torch.equal(by_id[group][0], by_columns[group][0]), (settings, group)
            assert torch.equal(by_id[group][1], by_columns[group][1]), (settings, group)
        # one copy of the index tables for the model's two embedding layers
        assert model.click_embedding._user_rows is model.purchase_embedding._user_rows


@pytest.mark.slow
def test_checkpoints_keep_the_map_and_score_unseen_tokens_with_it(cold_data_path, tmp_path):
    """A model rebuilt from its checkpoint alone maps ids as in training; the predictor and the
    TorchScript export score a token unseen in training with the OOV row and no features, and an
    old (format 2) checkpoint, which stores no min_count, loads as min_count 0."""
    from recbole_cstwa.quick_start import run_recbole_cstwa
    from recbole_cstwa.serving.export import export_model
    from recbole_cstwa.serving.module import ServingModule
    from recbole_cstwa.serving.predict import predict_file
    from recbole_cstwa.serving.trained import load_trained

    settings = {**tiny_config(cold_data_path, tmp_path), "dataset": COLD, "min_count": 3}
    result = run_recbole_cstwa(model="MLP", config_dict=settings)
    checkpoint = torch.load(result["model_file"], weights_only=True)
    assert checkpoint["settings"]["min_count"] == 3
    trained = load_trained(result["model_file"])
    stored = checkpoint["state_dict"]["click_embedding.token_rows"]
    for layer in (trained.model.click_embedding, trained.model.purchase_embedding):
        assert torch.equal(layer.token_rows, stored)
        assert (
            layer.token_table.weight.shape
            == checkpoint["state_dict"]["click_embedding.token_table.weight"].shape
        )
    assert trained.model.click_embedding._user_rows is trained.model.purchase_embedding._user_rows

    # A test file whose held-out users are written as a token never seen: the same scores (the
    # held-out user id was counted 0 times in training: the OOV row, as an unseen token).
    folder = os.path.join(cold_data_path, COLD)
    frame = pd.read_csv(os.path.join(folder, f"{COLD}.test.inter"), sep="\t", dtype=str)
    frame.columns = [name.split(":")[0] for name in frame.columns]
    held_out = {str(user) for user in cold_meta(cold_data_path)["cold_start"]["new_users"]["ids"]}
    cold = frame["user_id"].isin(held_out).to_numpy()
    assert cold.any()
    renamed = frame.copy()
    renamed.loc[cold, "user_id"] = [f"never-seen-{i}" for i in range(int(cold.sum()))]
    frame.to_csv(tmp_path / "as-is.csv", index=False)
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    as_is = predict_file(trained, tmp_path / "as-is.csv", tmp_path / "as-is.parquet")
    report = predict_file(trained, tmp_path / "renamed.csv", tmp_path / "renamed.parquet")
    assert report.unseen["user_id"] == int(cold.sum()) and as_is.unseen["user_id"] == 0
    assert any("out-of-vocabulary row" in line for line in report.lines())
    known_scores = pd.read_parquet(tmp_path / "as-is.parquet")
    unseen_scores = pd.read_parquet(tmp_path / "renamed.parquet")
    serving = ServingModule(trained)
    index = serving.unseen_index["user_id"]
    assert index == trained.dataset.num("user_id")

    # The export maps the unseen index as the eager module does, and says so in its schema.
    schema = export_model(trained, str(tmp_path / "served"))
    assert schema["unseen_token_index"]["user_id"] == index
    assert schema["unseen_token_index"]["item_id"] == trained.dataset.num("item_id")
    exported = torch.jit.load(str(tmp_path / "served" / "model.pt"))
    vocabulary = trained.dataset.vocabulary
    rows = frame[cold].head(20)
    tokens = torch.tensor(
        [
            [
                index if field == "user_id" else list(vocabulary(field)).index(row[field])
                for field in serving.token_fields
            ]
            for _, row in rows.iterrows()
        ]
    )
    floats = torch.zeros(len(tokens), 0)
    with torch.no_grad():
        eager = serving(tokens, floats)
        assert torch.equal(exported(tokens, floats), eager)
    np.testing.assert_allclose(
        unseen_scores.loc[cold, ["p_click", "p_purchase", "p_cvr"]].head(20).to_numpy(),
        eager.numpy(),
        atol=1e-6,
    )
    # a held-out user known by id keeps its .user features; an unseen token has none
    assert np.abs(known_scores.loc[cold].to_numpy() - unseen_scores.loc[cold].to_numpy()).max() > 0

    # A format-2 checkpoint of a min_count 0 model, without the key: loaded as min_count 0, it
    # scores as the checkpoint it was made from.
    settings["min_count"] = 0
    old_run = run_recbole_cstwa(
        model="MLP", config_dict={**settings, "checkpoint_dir": str(tmp_path / "old")}
    )
    state = torch.load(old_run["model_file"], weights_only=True)
    state["format"] = 2
    del state["settings"]["min_count"]
    old_file = tmp_path / "format-2.pth"
    torch.save(state, old_file)
    old, fresh = load_trained(old_file), load_trained(old_run["model_file"])
    assert old.config["min_count"] == 0 and old.model.click_embedding.token_rows is None
    old_serving, fresh_serving = ServingModule(old), ServingModule(fresh)
    assert old_serving.unseen_index["user_id"] == 0
    tokens = torch.stack(
        [torch.randint(0, old.dataset.num(f), (64,)) for f in old_serving.token_fields], dim=1
    )
    with torch.no_grad():
        assert torch.equal(old_serving(tokens, torch.zeros(64, 0)), fresh_serving(tokens, torch.zeros(64, 0)))


@pytest.mark.slow
def test_cstwas_literal_update_leaves_the_shared_out_of_vocabulary_row_alone(cstwa_stages):
    """``sm_mode: update`` writes each entity's own id row; rare users share the OOV row, which
    no single entity's propagation may overwrite."""
    trainer, model = cstwa_stages(sm_mode="update", min_count=25)
    embedding = model.purchase_embedding
    before = embedding.token_table.weight.detach().clone()
    model.update_structure()
    after = embedding.token_table.weight.detach()
    users = embedding.rows_of("user_id", torch.arange(model.num_entities("user")))
    oov = embedding.oov_row("user_id")
    assert (users == oov).any() and (users != oov).sum() > 1
    assert torch.equal(before[oov], after[oov])
    own = users[(users != oov) & (torch.arange(len(users)) > 0)]
    assert not torch.equal(before[own], after[own])
