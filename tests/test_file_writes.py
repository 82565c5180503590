"""Files the plugin writes: never through a symbolic link, whole or not at all, cleaned up on a
full disk; caches that are checked before they are used."""

import errno
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import TINY, dataset_cache_dirs

from recbole_cstwa import file_writes
from recbole_cstwa.checkpoint import SafeCheckpointMixin, load_checkpoint
from recbole_cstwa.commands.import_dataset import main as import_main
from recbole_cstwa.data import create_dataset
from recbole_cstwa.data.dataset import MultiTaskDataset
from recbole_cstwa.errors import CompareError, ConfigError, DiskFullError
from recbole_cstwa.experiments.compare import execute
from recbole_cstwa.model.multitask.cstwa.artifact_cache import ArtifactCache
from recbole_cstwa.tools import writer as writer_module

VICTIM_TEXT = "the victim's own bytes\n"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


def _unchanged(victim):
    return victim.read_text() == VICTIM_TEXT


# ----- High 2: no write through a symbolic link ----------------------------------------------------
def test_artifact_cache_never_writes_through_planted_links(tmp_path, victim):
    cache = ArtifactCache(str(tmp_path / "saved"), "CSTWA-x")
    settings = {"graph_top_k": 8}
    path = cache.path("graphs", settings)
    os.makedirs(cache.directory)
    # The temporary names of earlier versions, and the targets themselves.
    for name in (f"{path}.{os.getpid()}.tmp", f"{path}.{os.getpid()}.tmp.json", path, path[:-4] + ".json"):
        os.symlink(victim, name)
    cache.save("graphs", settings, {"values": torch.arange(4.0)})
    assert _unchanged(victim)
    assert not os.path.islink(path) and not os.path.islink(path[:-4] + ".json")
    artifact, _, reason = cache.load("graphs", settings)
    assert reason is None and torch.equal(artifact["values"], torch.arange(4.0))


def test_atomic_file_replaces_a_link_and_leaves_no_temporary(tmp_path, victim):
    target = tmp_path / "out.txt"
    os.symlink(victim, target)
    file_writes.write_text(target, "new\n")
    assert _unchanged(victim) and not target.is_symlink() and target.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "outside"]


def test_checkpoint_is_not_written_through_a_link(tmp_path, victim):
    target = tmp_path / "model.pth"
    os.symlink(victim, target)
    _Trainer(str(target))._save_checkpoint(1, verbose=False)
    assert _unchanged(victim) and not target.is_symlink()
    assert load_checkpoint(target)["epoch"] == 1


def test_runs_file_link_is_refused(tmp_path, victim):
    output = tmp_path / "compare"
    output.mkdir()
    os.symlink(victim, output / "runs.jsonl")
    with pytest.raises(CompareError, match="symbolic link"):
        execute(_Plan(), str(output), runner=lambda **_: pytest.fail("ran"), log=lambda _: None)
    with pytest.raises(OSError) as raised:
        file_writes.open_append(str(output / "runs.jsonl"))
    assert raised.value.errno == errno.ELOOP and _unchanged(victim)


def test_dataset_cache_folder_link_is_replaced_not_followed(make_config, tmp_path, victim):
    config = make_config("ESMM")
    create_dataset(config)
    (name,) = dataset_cache_dirs(config)
    directory = os.path.join(config["checkpoint_dir"], name)
    shutil.rmtree(directory)
    os.symlink(victim.parent, directory)
    create_dataset(config)
    assert sorted(os.listdir(victim.parent)) == ["victim.txt"] and _unchanged(victim)
    assert not os.path.islink(directory) and os.path.isfile(os.path.join(directory, "manifest.json"))


def test_importer_ignores_links_at_the_old_part_names(tmp_path, victim):
    from test_importer import with_ids

    with_ids(tmp_path)
    folder = tmp_path / "out" / "ae"
    for suffix in ("train.inter", "valid.inter", "test.inter", "user", "item", "yaml", "meta.json"):
        os.symlink(victim, folder / f"ae.{suffix}.part")
    with_ids(tmp_path)
    assert _unchanged(victim)
    assert not any(name.endswith(".part") for name in os.listdir(folder))


# ----- High 3: a file changed while it is read --------------------------------------------------
def test_file_changed_mid_read_is_not_cached(make_config, tiny_data_path, tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    shutil.copytree(f"{tiny_data_path}/{TINY}", data / TINY)
    path = data / TINY / f"{TINY}.test.inter"
    original = path.read_bytes()
    config = make_config("ESMM", data_path=str(data))
    reference = create_dataset(make_config("ESMM", data_path=str(data), cache_dataset=False))
    read = MultiTaskDataset._read_atomic_file

    def change_then_read(self, filepath, source):
        if str(filepath) == str(path):  # another writer replaces a cell after the key was hashed
            lines = original.decode().splitlines(keepends=True)
            first = lines[1].split("\t")
            first[0] = "a-new-user"
            path.write_text(lines[0] + "\t".join(first) + "".join(lines[2:]))
        return read(self, filepath, source)

    monkeypatch.setattr(MultiTaskDataset, "_read_atomic_file", change_then_read)
    caplog.set_level(logging.INFO)
    create_dataset(config)
    assert "changed while the dataset was read" in caplog.text
    assert dataset_cache_dirs(config) == []
    monkeypatch.setattr(MultiTaskDataset, "_read_atomic_file", read)
    path.write_bytes(original)  # the old bytes again: the next run must not get the mixed data
    caplog.clear()
    again = create_dataset(config)
    assert "loaded from the cache" not in caplog.text
    assert "a-new-user" not in list(again.field2id_token["user_id"])
    assert list(again.field2id_token["user_id"]) == list(reference.field2id_token["user_id"])


# ----- High 4: a cached array changed after it was written --------------------------------------
def _cache_folder(config):
    (name,) = dataset_cache_dirs(config)
    return os.path.join(config["checkpoint_dir"], name)


def test_poisoned_cached_array_is_rebuilt(make_config, caplog):
    config = make_config("ESMM")
    fresh = create_dataset(config)
    directory = _cache_folder(config)
    clicks = np.load(os.path.join(directory, "inter_feat.click.npy"))
    np.save(os.path.join(directory, "inter_feat.purchase.npy"), clicks)  # purchases := clicks
    caplog.set_level(logging.INFO)
    rebuilt = create_dataset(config)
    assert "does not match its checksum" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(rebuilt.inter_feat["purchase"], fresh.inter_feat["purchase"])
    assert not torch.equal(rebuilt.inter_feat["purchase"], rebuilt.inter_feat["click"])


def test_cached_labels_are_checked_again(make_config, caplog):
    config = make_config("ESMM")
    create_dataset(config)
    directory = _cache_folder(config)
    purchase = np.load(os.path.join(directory, "inter_feat.purchase.npy"))
    click = np.load(os.path.join(directory, "inter_feat.click.npy"))
    purchase[np.flatnonzero(click == 0)[:3]] = 1  # purchases without a click
    np.save(os.path.join(directory, "inter_feat.purchase.npy"), purchase)
    manifest_path = os.path.join(directory, "manifest.json")
    with open(manifest_path, encoding="utf-8") as file:
        manifest = json.load(file)
    from recbole_cstwa.digest import array_checksum

    manifest["arrays"]["inter_feat.purchase.npy"]["blake2b"] = array_checksum(
        purchase
    )  # a consistent forgery
    with open(manifest_path, "w", encoding="utf-8") as file:
        json.dump(manifest, file)
    caplog.set_level(logging.INFO)
    dataset = create_dataset(config)
    assert "purchase without a click" in caplog.text and "rebuilding it" in caplog.text
    purchases, clicks = dataset.inter_feat["purchase"].numpy(), dataset.inter_feat["click"].numpy()
    assert not ((purchases == 1) & (clicks == 0)).any()


def test_rewired_graph_artifact_is_recomputed(tmp_path):
    cache = ArtifactCache(str(tmp_path), "CSTWA-x")
    settings = {"graph_top_k": 2}
    path = cache.save("graphs", settings, {"user": {"indices": torch.tensor([[0, 1], [1, 0]])}})
    artifact = torch.load(path, weights_only=True)
    artifact["user"]["indices"] = torch.tensor([[0, 0], [1, 1]])  # same settings, other edges
    torch.save(artifact, path)
    loaded, _, reason = cache.load("graphs", settings)
    assert loaded is None and "does not match its checksums" in reason


# ----- High 5: manifest names outside the folder, unparsable manifests ---------------------------
@pytest.mark.parametrize("damage", ["parent path", "absolute path", "table name", "nested brackets"])
def test_hostile_manifest_means_rebuild(make_config, tmp_path, caplog, damage):
    config = make_config("ESMM")
    fresh = create_dataset(config)
    directory = _cache_folder(config)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    manifest_path = os.path.join(directory, "manifest.json")
    with open(manifest_path, encoding="utf-8") as file:
        manifest = json.load(file)
    if damage == "parent path":
        manifest["arrays"]["../../outside.npy"] = {"dtype": "<f8", "shape": [3], "blake2b": "0"}
        manifest["columns"]["inter_feat"].append("../../../outside")
    elif damage == "absolute path":
        manifest["arrays"][str(outside)] = {"dtype": "<f8", "shape": [3], "blake2b": "0"}
    elif damage == "table name":
        manifest["feat_name_list"].append("config")
    text = json.dumps(manifest)
    if damage == "nested brackets":
        text = "[" * 200_000 + "]" * 200_000
    with open(manifest_path, "w", encoding="utf-8") as file:
        file.write(text)
    caplog.set_level(logging.INFO)
    rebuilt = create_dataset(config)
    assert "cannot be used" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(rebuilt.inter_feat["click"], fresh.inter_feat["click"])


# ----- High 8: the importer swaps the whole folder ------------------------------------------------
def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("where", ["exchange", "fallback second rename"])
def test_importer_commit_killed_leaves_the_whole_old_dataset(tmp_path, monkeypatch, where):
    from test_importer import TRAIN, with_ids, write_csv

    with_ids(tmp_path)
    folder = tmp_path / "out" / "ae"
    before = _snapshot(folder)
    if where == "exchange":

        def killed(*_):
            raise KeyboardInterrupt  # a kill at the commit

        monkeypatch.setattr(writer_module, "replace_directory", killed)
    else:
        monkeypatch.setattr(file_writes, "_exchange", lambda *_: False)
        renames = []
        real_rename = os.rename

        def second_fails(source, target):
            renames.append(target)
            if len(renames) == 2:
                raise KeyboardInterrupt
            real_rename(source, target)

        monkeypatch.setattr(file_writes.os, "rename", second_fails)
    with pytest.raises(KeyboardInterrupt):
        with_ids(tmp_path, train=write_csv(tmp_path / "train2.csv", TRAIN[:3]))
    assert _snapshot(folder) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["ae"]  # no new folder left beside it
    monkeypatch.undo()
    with_ids(tmp_path, train=write_csv(tmp_path / "train2.csv", TRAIN[:3]))
    assert _snapshot(folder) != before and sorted(_snapshot(folder)) == sorted(before)


def test_importer_keeps_a_users_own_file(tmp_path):
    from test_importer import with_ids

    with_ids(tmp_path)
    notes = tmp_path / "out" / "ae" / "NOTES.txt"
    notes.write_text("mine\n")
    with_ids(tmp_path)
    assert notes.read_text() == "mine\n"


# ----- Medium: full disks, damaged checkpoints -------------------------------------------------
class _Module(torch.nn.Linear):
    def other_parameter(self):
        return None


class _Config(dict):
    """The few settings a checkpoint save reads, as RecBole's Config answers them."""

    @property
    def final_config_dict(self):
        return self


class _Trainer(SafeCheckpointMixin):
    def __init__(self, saved_model_file):
        self.config = _Config(
            single_spec=True, local_rank=0, model="MLP", dataset=TINY, data_path=os.path.join("dataset", TINY)
        )
        self.model = _Module(64, 64)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.cur_step, self.best_valid_score = 0, 0.5
        self.saved_model_file = saved_model_file
        self.logger = logging.getLogger()


def _disk_full_after(real_save, nbytes):
    def save(state, file):
        file.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "saved" / "model.pth"
    target.parent.mkdir()
    trainer = _Trainer(str(target))
    trainer._save_checkpoint(1, verbose=False)
    previous = target.read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_after(torch.save, 1000))
    with pytest.raises(ConfigError) as raised:
        trainer._save_checkpoint(2, verbose=False)
    message = str(raised.value)
    assert f"[{target.parent}]" in message and "MiB were needed" in message and "--checkpoint_dir" in message
    assert target.read_bytes() == previous and os.listdir(target.parent) == ["model.pth"]


@pytest.mark.parametrize(
    "content, says",
    [(b"", "is empty"), ("half", "is truncated"), (b"epoch,auc\n1,0.7\n", "is not a PyTorch checkpoint")],
)
def test_damaged_checkpoint_says_what_is_wrong(tmp_path, content, says):
    path = tmp_path / "model.pth"
    if content == "half":
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=says) as raised:
        load_checkpoint(path)
    assert "could run code" not in str(raised.value)


def test_failed_artifact_cache_write_leaves_no_temporary(tmp_path, monkeypatch):
    cache = ArtifactCache(str(tmp_path), "CSTWA-x")
    monkeypatch.setattr(torch, "save", _disk_full_after(torch.save, 1000))
    with pytest.raises(DiskFullError, match=str(tmp_path)):
        cache.save("graphs", {"k": 1}, {"values": torch.ones(3)})
    assert os.listdir(tmp_path) == []


def test_a_disk_full_error_is_an_os_error_and_an_input_error(capsys):
    """Callers of a write test ``isinstance(error, OSError)`` and its errno; the command lines
    print it as one ``error:`` line (an :class:`InputError`)."""
    import pickle

    from recbole_cstwa.commands.cli import reported_errors
    from recbole_cstwa.errors import InputError

    error = DiskFullError("no space left on the device of [out]: 3.0 MiB were needed")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert isinstance(error, InputError)
    assert str(error) == "no space left on the device of [out]: 3.0 MiB were needed"
    copy = pickle.loads(pickle.dumps(error))  # as a worker process sends it back
    assert type(copy) is DiskFullError and str(copy) == str(error) and copy.errno == errno.ENOSPC
    with pytest.raises(SystemExit) as stop, reported_errors():
        raise error
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_importer_on_a_full_disk_cleans_up_and_names_the_folder(tmp_path, monkeypatch, capsys):
    from test_importer import TEST, TRAIN, VALID, write_csv

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module.TableWriter, "flush", full)
    status = import_main(
        [
            "--output",
            str(tmp_path / "out"),
            "--name",
            "ae",
            "--click",
            "click",
            "--purchase",
            "conversion",
            "--train",
            write_csv(tmp_path / "train.csv", TRAIN),
            "--valid",
            write_csv(tmp_path / "valid.csv", VALID),
            "--test",
            write_csv(tmp_path / "test.csv", TEST),
        ]
    )
    assert status == 2
    assert f"error: no space left on the device of [{tmp_path / 'out'}]" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


# ----- Low: lists instead of objects, stale temporary folders -----------------------------------
def test_artifact_or_sidecar_holding_a_list(tmp_path):
    cache = ArtifactCache(str(tmp_path), "CSTWA-x")
    path = cache.save("graphs", {"k": 1}, {"values": torch.ones(3)})
    torch.save([1, 2], path)
    artifact, _, reason = cache.load("graphs", {"k": 1})
    assert artifact is None and "holds a list" in reason
    with open(path[:-4] + ".json", "w", encoding="utf-8") as file:
        json.dump([1, 2], file)
    artifact, _, reason = cache.load("graphs", {"k": 2})
    assert artifact is None and "holds no settings" in reason


def test_stale_temporary_cache_folders_are_removed(make_config, tmp_path):
    config = make_config("ESMM")
    root = tmp_path / "saved"
    root.mkdir()
    dead, old_style, live = (
        root / ".tmp-999999999-abc",
        root / ".tmp-k2j4x9",
        root / f".tmp-{os.getpid()}-abc",
    )
    fresh = root / ".tmp-999999998-new"
    for folder in (dead, old_style, live, fresh):
        folder.mkdir()
        (folder / "inter_feat.click.npy").write_bytes(b"x")
    hours_ago = time.time() - 7 * 3600
    for folder in (dead, old_style, live):
        os.utime(folder, (hours_ago, hours_ago))
    create_dataset(config)
    left = set(os.listdir(root))
    assert dead.name not in left and old_style.name not in left
    assert live.name in left and fresh.name in left  # a live writer's, and a recent one


class _Plan:
    runs = [{"row": "MLP", "seed": 1, "task": "both", "key": "k", "model": "MLP", "config": {}}]
    dataset = TINY
    config_file_list = []


def test_empty_tensors_and_arrays_have_checksums(tmp_path):
    from recbole_cstwa.digest import array_checksum

    assert len(array_checksum(np.zeros((0, 3)))) == 32  # dtype and shape are checked beside it
    cache = ArtifactCache(str(tmp_path), "CSTWA-x")
    cache.save("graphs", {"k": 1}, {"values": torch.zeros(0, 4), "flags": torch.ones(2, dtype=torch.bool)})
    artifact, _, reason = cache.load("graphs", {"k": 1})
    assert reason is None and artifact["values"].shape == (0, 4)
