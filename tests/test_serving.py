"""From a trained model to scores: checkpoints that load alone, load_data_and_model, the file
predictor, the TorchScript and ONNX exports, --model_file evaluation and --resume."""

import copy
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, load_script, tiny_config

from recbole_cstwa.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from recbole_cstwa.errors import CheckpointError

PLUGIN_MODELS = ("MLP", "ESMM", "OMoE", "MMoE", "PLE", "AITM", "ESCM2", "DCMT", "DDPO", "NISE", "CSTWA")
#: Per-model settings: CSTWA refreshes P every 2 steps, so its checkpoint holds a P in use.
SETTINGS = {"CSTWA": {"sm_refresh_steps": 2}, "DeepFM": {"LABEL_FIELD": "click"}}


def model_predictions(model, data, multitask=True):
    """``{output: (N,)}`` of ``model`` over every batch of ``data``, in order."""
    model.eval()
    collected = {}
    with torch.no_grad():
        for batch in data:
            interaction = batch[0]
            outputs = model.predict_tasks(interaction) if multitask else {"score": model.predict(interaction)}
            for name, value in outputs.items():
                collected.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in collected.items()}


class Trained:
    """One model trained for one epoch on the tiny dataset, with its trainer's test predictions."""

    def __init__(self, name, data_path, folder, **settings):
        from recbole_cstwa.config import Config
        from recbole_cstwa.data import create_dataset, data_preparation
        from recbole_cstwa.registry import get_model, get_trainer, is_multitask_model

        overrides = {**SETTINGS.get(name, {}), **settings}
        self.config = Config(model=name, config_dict=tiny_config(data_path, folder, **overrides))
        train_data, valid_data, self.test_data = data_preparation(self.config, create_dataset(self.config))
        model = get_model(name)(self.config, train_data._dataset)
        trainer = get_trainer(self.config["MODEL_TYPE"], name)(self.config, model)
        trainer.fit(train_data, valid_data, saved=True)
        self.test_result = trainer.evaluate(self.test_data, load_best_model=True)
        self.multitask = is_multitask_model(type(model))
        self.predictions = model_predictions(trainer.model, self.test_data, self.multitask)
        self.model_file = trainer.saved_model_file
        self.name = name


@pytest.fixture(scope="module")
def trained(tiny_data_path, tmp_path_factory):
    """``trained(name, **settings)``: the model trained once a module (cached), in its own folder."""
    cache = {}
    root = tmp_path_factory.mktemp("serving")

    def get(name, **settings):
        key = (name, *sorted(settings.items()))
        if key not in cache:
            folder = root / "-".join(f"{part}" for part in key)
            folder.mkdir()
            previous = os.getcwd()
            os.chdir(folder)  # RecBole writes log/ into the working directory
            try:
                cache[key] = Trained(name, tiny_data_path, folder, **settings)
            finally:
                os.chdir(previous)
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MLP", "AITM", "ESCM2", "CSTWA", "DeepFM"])
def test_load_data_and_model_gives_the_trainers_test_predictions(trained, name, monkeypatch):
    import logging

    from recbole_cstwa.quick_start import load_data_and_model

    run = trained(name)
    state = torch.load(run.model_file, weights_only=True)  # still plain data only
    assert state["format"] == CHECKPOINT_FORMAT == 3
    assert state["settings"]["embedding_size"] == run.config["embedding_size"]
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: RecBole's handlers are the root's
    monkeypatch.setattr(root, "level", root.level)
    config, model, dataset, _, _, test_data = load_data_and_model(run.model_file, {"state": "INFO"})
    for handler in root.handlers:
        handler.close()
    assert config["model"] == name and len(test_data.dataset) == len(run.test_data.dataset)
    assert model.training  # as RecBole's: the caller calls model.eval() before scoring
    (log_file,) = glob.glob(os.path.join("log", name, "*.log"))  # a log file of its own, as a run's
    assert log_file.endswith(f"-{os.getpid()}.log") and os.path.getsize(log_file) > 0
    reloaded = model_predictions(model, test_data, run.multitask)
    assert set(reloaded) == set(run.predictions)
    for output, values in run.predictions.items():
        assert torch.equal(reloaded[output], values), output
    if name == "CSTWA":  # trained with a P in use: the checkpoint brought graphs and P
        assert model.has_graphs() and bool(model.structure["user"].ready)


def _scored_inputs(run):
    """The test split as raw tokens (the atomic file), and the trainer's predictions."""
    path = os.path.join(run.config["data_path"], f"{TINY}.test.inter")
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.columns = [name.split(":")[0] for name in frame.columns]
    assert len(frame) == len(run.test_data.dataset)
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("min_count", [0, 2])
@pytest.mark.parametrize("name", ["MLP", "CSTWA"])
def test_predict_a_file_with_unseen_ids_no_labels_extra_and_shuffled_columns(
    trained, name, min_count, tmp_path
):
    from recbole_cstwa.serving.predict import predict_file
    from recbole_cstwa.serving.trained import load_trained

    run = trained(name, min_count=min_count)
    frame = _scored_inputs(run)
    unseen_rows = np.arange(0, len(frame), 7)
    frame.loc[unseen_rows, "user_id"] = "a-user-never-seen"
    frame.loc[unseen_rows[:5], "position"] = "99999"
    frame["request_id"] = [f"r{i}" for i in range(len(frame))]
    frame["ignored"] = "x"
    unlabelled = frame.drop(columns=["click", "purchase"])
    unlabelled = unlabelled[list(reversed(unlabelled.columns))]
    source = tmp_path / "new.csv"
    unlabelled.to_csv(source, index=False)

    model = load_trained(run.model_file)
    report = predict_file(model, source, tmp_path / "scores.parquet", keys=["request_id"], batch_size=97)
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(scores.columns) == ["request_id", "p_click", "p_purchase", "p_cvr"]
    assert scores["request_id"].tolist() == frame["request_id"].tolist()
    assert report.rows == len(frame) and report.metrics == {}
    assert report.unseen["user_id"] == len(unseen_rows) and report.unseen["position"] == 5
    assert report.unseen["item_id"] == 0

    known = np.setdiff1d(np.arange(len(frame)), unseen_rows)
    for column, output in (("p_click", "click"), ("p_purchase", "purchase")):
        expected = run.predictions[output].numpy()[known]
        np.testing.assert_allclose(scores[column].to_numpy()[known], expected, rtol=0, atol=1e-6)
    # Without min_count an unseen user scores as the padding user (index 0), as an empty cell
    # would; with it, as the user id's unseen index (its out-of-vocabulary row, no features).
    from recbole_cstwa.serving.module import ServingModule

    serving = ServingModule(model)
    unseen_index = serving.unseen_index["user_id"]
    assert unseen_index == (0 if min_count == 0 else model.dataset.num("user_id"))
    row = frame.iloc[unseen_rows[-1]]

    def score_as(user_index):
        tokens = torch.tensor(
            [
                [
                    user_index
                    if field == "user_id"
                    else model.dataset.vocabulary(field).tolist().index(row[field])
                    for field in serving.token_fields
                ]
            ]
        )
        return serving(tokens, torch.zeros(1, 0))[0].detach().numpy()

    written = scores.iloc[unseen_rows[-1]][["p_click", "p_purchase", "p_cvr"]].to_numpy(float)
    np.testing.assert_allclose(written, score_as(unseen_index), atol=1e-6)
    if min_count:
        assert np.abs(written - score_as(0)).max() > 1e-4  # not the absent user's score

    # With the labels (and the file's own column order), the run's metrics are printed.
    labelled = tmp_path / "labelled.inter"
    original = os.path.join(run.config["data_path"], f"{TINY}.test.inter")
    with open(original) as source_file, open(labelled, "w") as target:
        target.write(source_file.read())
    report = predict_file(model, labelled, tmp_path / "scores.csv")
    # all but the metrics that need the truth or the training split (the cold-start slice)
    from_labels = {m: v for m, v in run.test_result.items() if "truth" not in m and "cold" not in m}
    assert set(report.metrics) == set(from_labels)
    for metric, value in from_labels.items():
        assert report.metrics[metric] == pytest.approx(value, abs=1e-6), metric


@pytest.mark.parametrize(
    "tokens",
    [
        ["[PAD]", "5", "0", "-3", "12", "100000000000000000"],  # integers: mapped by value
        ["[PAD]", "5", "0", "-3", "12", "7"],  # integers filling their range: through an array
        ["[PAD]", "5", "0", "-3", "12", "x7"],  # not all integers: mapped by string
        ["[PAD]", "5", "007", "12"],  # "007" is not written plainly: by string
        ["[PAD]", "5", "1000000000000000000"],  # 19 digits: by string
    ],
)
def test_field_vocabulary_maps_as_the_strings_do(tokens):
    """The integer look-up gives what a string look-up gives, for every kind of cell."""
    import pyarrow as pa

    from recbole_cstwa.schema import decode_tokens, decode_tokens_arrow, encode_tokens
    from recbole_cstwa.serving.predict import FieldVocabulary

    encoded = encode_tokens(tokens)
    assert decode_tokens_arrow(encoded).to_pylist() == list(decode_tokens(encoded)) == tokens
    cells = ["5", "05", "+5", None, "0", "-3", "-0", "12", "13", "007", "x7", "[PAD]", "", "-4", "0x0c"]
    cells += ["100000000000000000", "1000000000000000000", "9223372036854775807", "-9223372036854775808"]
    # all the cells, and only those that cast to integers (the integer look-up then does it all)
    integer_like = [cell for cell in cells if cell is None or cell.lstrip("-").isdigit()]
    integer_like.append("0x0c")  # hexadecimal, which the integer cast reads too

    def expected(cells, unseen_index=0):
        indices = [tokens.index(cell) if cell in tokens[1:] else 0 for cell in cells]
        unseen = [cell is not None and index == 0 for cell, index in zip(cells, indices)]
        return [unseen_index if new else index for index, new in zip(indices, unseen)], sum(unseen)

    for vocabulary in (FieldVocabulary(tokens), FieldVocabulary(decode_tokens_arrow(encoded))):
        for subset in (cells, integer_like):
            indices, unseen = vocabulary.indices(pa.array(subset, pa.string()))
            assert (indices.tolist(), unseen) == expected(subset)
        indices, unseen = vocabulary.indices(pa.chunked_array([pa.array(cells[:5]), pa.array(cells[5:])]))
        assert (indices.tolist(), unseen) == expected(cells)
        indices, unseen = vocabulary.indices(pa.array(cells, pa.string()).dictionary_encode())
        assert (indices.tolist(), unseen) == expected(cells)
    for subset in (cells, integer_like):  # a model with out-of-vocabulary rows: the unseen index
        indices, unseen = FieldVocabulary(tokens, unseen_index=len(tokens)).indices(
            pa.array(subset, pa.string())
        )
        assert (indices.tolist(), unseen) == expected(subset, unseen_index=len(tokens))
    integers = tokens[-1] in ("100000000000000000", "7")
    assert (FieldVocabulary(tokens)._integers is not None) == integers
    assert (FieldVocabulary(tokens)._dense is not None) == (tokens[-1] == "7")


def test_predictor_refuses_a_file_without_a_feature_column(tmp_path, trained_stub):
    from recbole_cstwa.errors import PredictInputError
    from recbole_cstwa.serving.predict import predict_file

    source = tmp_path / "new.csv"
    pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}).to_csv(source, index=False)
    with pytest.raises(PredictInputError, match=r"has no column \['position'"):
        predict_file(trained_stub, source, tmp_path / "out.csv")


def test_predictor_reads_its_input_by_the_tables_rule(tmp_path, trained_stub):
    """A compressed text table scores as the plain one; a name of no table kind, a compressed
    parquet file or a compressed output is refused, naming what is read."""
    import gzip

    from recbole_cstwa.errors import PredictInputError
    from recbole_cstwa.serving.predict import predict_file

    original = os.path.join(trained_stub.config["data_path"], f"{TINY}.test.inter")
    with open(original, "rb") as file:
        (tmp_path / "rows.inter.gz").write_bytes(gzip.compress(file.read()))
    plain = predict_file(trained_stub, original, tmp_path / "plain.csv")
    packed = predict_file(trained_stub, tmp_path / "rows.inter.gz", tmp_path / "packed.csv")
    assert packed.rows == plain.rows > 0 and packed.metrics == plain.metrics
    assert (tmp_path / "packed.csv").read_text() == (tmp_path / "plain.csv").read_text()
    for source, target, says in (
        (tmp_path / "rows.txt", tmp_path / "out.csv", r"Input file .* ends in \.txt: use one of \.csv"),
        (tmp_path / "rows.parquet.gz", tmp_path / "out.csv", r"ends in \.parquet\.gz"),
        (tmp_path / "rows.inter.gz", tmp_path / "out.csv.gz", r"Output file .* ends in \.csv\.gz"),
    ):
        with pytest.raises(PredictInputError, match=says):
            predict_file(trained_stub, source, target)


@pytest.fixture
def trained_stub(trained):
    from recbole_cstwa.serving.trained import load_trained

    return load_trained(trained("MLP").model_file)


def requires_onnx():
    """Skips the calling test where the onnx extra (onnx and onnxruntime) is not installed."""
    for package in ("onnx", "onnxruntime"):
        pytest.importorskip(package, reason='the onnx extra: pip install -e ".[test,onnx]"')


def split_inputs(run, schema):
    """``(tokens, floats)`` of ``run``'s test split in the order ``schema`` gives (the tiny
    dataset has no numerical fields: ``floats`` has no column)."""
    interaction = run.test_data.dataset.inter_feat
    tokens = torch.stack([interaction[field].long() for field in schema["inputs"]["tokens"]["fields"]], dim=1)
    return tokens, torch.zeros(len(tokens), 0)


def blocked_imports(*packages):
    """The head of a script run by a Python that cannot import ``packages``."""
    import site

    return (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {packages!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = {site.getsitepackages()!r}\n"
    )


def run_isolated(script, folders, cwd):
    """``{model: largest difference}`` printed by ``script`` run in ``python -I -S`` on ``folders``."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, *folders],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {name: float(value) for name, value in (line.split() for line in done.stdout.strip().splitlines())}


@pytest.mark.slow
def test_export_equals_eager_for_every_plugin_model_and_runs_without_the_plugin(trained, tmp_path):
    from recbole_cstwa.serving.export import export_model
    from recbole_cstwa.serving.module import ServingModule
    from recbole_cstwa.serving.trained import load_trained

    cases = []
    for name in PLUGIN_MODELS:
        run = trained(name)
        model = load_trained(run.model_file)
        folder = tmp_path / name
        schema = export_model(model, str(folder))
        serving = ServingModule(model)
        tokens, floats = split_inputs(run, schema)
        exported = torch.jit.load(str(folder / "model.pt"))
        with torch.no_grad():
            eager = serving(tokens, floats)
            for rows in (1, 256, len(tokens)):
                difference = (exported(tokens[:rows], floats[:rows]) - eager[:rows]).abs().max().item()
                assert difference <= 1e-6, (name, rows, difference)
            # the predictor's module (each user's and item's vectors in one row) scores the same
            fast = ServingModule(model, entity_vectors=True)
            assert fast.joint_lookups and all(joint.entity_vectors for joint in fast.joint_lookups), name
            assert torch.equal(fast(tokens, floats), eager), name
        # and the eager module is the trainer's model
        np.testing.assert_allclose(eager[:, 1].numpy(), run.predictions["purchase"].numpy(), atol=1e-6)
        torch.save({"tokens": tokens, "floats": floats, "expected": eager}, folder / "check.pt")
        assert json.loads((folder / "schema.json").read_text())["output"]["columns"] == [
            "p_click",
            "p_purchase",
            "p_cvr",
        ]
        assert (folder / "vocab" / "user_id.txt").read_text().split("\n")[0] == "[PAD]"
        cases.append(str(folder))

    # Loaded by a Python that cannot import RecBole or the plugin: torch only.
    script = blocked_imports("recbole", "recbole_cstwa") + (
        "import torch\n"
        "for folder in sys.argv[1:]:\n"
        "    check = torch.load(folder + '/check.pt', weights_only=True)\n"
        "    model = torch.jit.load(folder + '/model.pt')\n"
        "    with torch.no_grad():\n"
        "        out = model(check['tokens'], check['floats'])\n"
        "    print(folder.rsplit('/', 1)[-1], float((out - check['expected']).abs().max()))\n"
        "assert not any(m.split('.')[0] in ('recbole', 'recbole_cstwa') for m in sys.modules)\n"
    )
    differences = run_isolated(script, cases, tmp_path)
    assert set(differences) == set(PLUGIN_MODELS)
    assert all(value <= 1e-6 for value in differences.values()), differences


@pytest.mark.slow
def test_onnx_export_equals_eager_for_every_plugin_model_and_runs_with_onnxruntime_alone(trained, tmp_path):
    requires_onnx()
    from recbole_cstwa.serving.export import export_model
    from recbole_cstwa.serving.module import ServingModule
    from recbole_cstwa.serving.trained import load_trained

    cases = []
    for name in PLUGIN_MODELS:
        run = trained(name)
        model = load_trained(run.model_file)
        folder = tmp_path / name
        schema = export_model(model, str(folder), "onnx")
        assert schema["artifact"]["file"] == "model.onnx" and schema["output"]["name"] == "probabilities"
        assert list(schema["inputs"]) == ["tokens"]  # no numerical fields: floats is not read
        tokens, floats = split_inputs(run, schema)
        with torch.no_grad():
            eager = ServingModule(model)(tokens, floats)
        np.testing.assert_allclose(eager[:, 1].numpy(), run.predictions["purchase"].numpy(), atol=1e-6)
        np.save(folder / "tokens.npy", tokens.numpy())
        np.save(folder / "expected.npy", eager.numpy())
        cases.append(str(folder))

    # Run by a Python that cannot import torch, RecBole or the plugin: onnxruntime and numpy only,
    # on batches of 1 and 256 rows and the whole split (the export traced 64).
    script = blocked_imports("torch", "recbole", "recbole_cstwa") + (
        "import json, numpy, onnxruntime\n"
        "for folder in sys.argv[1:]:\n"
        "    schema = json.load(open(folder + '/schema.json'))\n"
        "    session = onnxruntime.InferenceSession(folder + '/' + schema['artifact']['file'])\n"
        "    tokens, expected = numpy.load(folder + '/tokens.npy'), numpy.load(folder + '/expected.npy')\n"
        "    worst = 0.0\n"
        "    for rows in (1, 256, len(tokens)):\n"
        "        (out,) = session.run([schema['output']['name']], {'tokens': tokens[:rows]})\n"
        "        assert out.shape == (rows, len(schema['output']['columns']))\n"
        "        worst = max(worst, float(numpy.abs(out - expected[:rows]).max()))\n"
        "    print(folder.rsplit('/', 1)[-1], worst)\n"
        "assert not any(m.split('.')[0] in ('torch', 'recbole', 'recbole_cstwa') for m in sys.modules)\n"
    )
    differences = run_isolated(script, cases, tmp_path)
    assert set(differences) == set(PLUGIN_MODELS)
    assert all(value <= 1e-6 for value in differences.values()), differences


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["torchscript", "onnx"])
def test_an_export_that_differs_from_the_eager_model_is_refused_and_writes_nothing(
    trained, tmp_path, monkeypatch, export_format
):
    if export_format == "onnx":
        requires_onnx()
    from recbole_cstwa.errors import InputError
    from recbole_cstwa.serving.export import export_model
    from recbole_cstwa.serving.module import ServingModule
    from recbole_cstwa.serving.trained import load_trained

    model = load_trained(trained("MLP").model_file)
    folder = tmp_path / export_format
    schema = export_model(model, str(folder), export_format)
    written = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert set(written) == {schema["artifact"]["file"], "schema.json"}

    # The eager model's p_click moves by 2e-6 (the traced one, recorded while tracing, does not).
    forward = ServingModule.forward

    def shifted(self, tokens, floats):
        output = forward(self, tokens, floats)
        return output if torch.jit.is_tracing() else output + torch.tensor([2e-6, 0.0, 0.0])

    monkeypatch.setattr(ServingModule, "forward", shifted)
    with pytest.raises(InputError, match="times the tolerance"):
        export_model(model, str(folder), export_format)
    # the earlier export is untouched, and no temporary file is left
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == written


def test_the_export_tolerance_is_absolute_but_relative_for_a_division_p_cvr():
    from types import SimpleNamespace

    from recbole_cstwa.serving.export import export_difference

    eager = torch.tensor([[0.04, 0.0004, 0.01], [0.5, 0.2, 0.4]])
    division = SimpleNamespace(outputs=["click", "purchase", "cvr"], native_outputs=["click", "purchase"])
    head = SimpleNamespace(outputs=["click", "purchase", "cvr"], native_outputs=["click", "purchase", "cvr"])

    def moved(column, by):
        exported = eager.clone()
        exported[0, column] += by
        return exported

    # p_click and p_purchase: 1e-6 absolute, however small the value
    assert export_difference(moved(0, 9e-7), eager, division) <= 1.0
    assert export_difference(moved(1, 2e-6), eager, division) > 1.0
    # a DIVISION p_cvr of 0.01: 1e-5 of it (1e-7) is the bound, below the absolute one
    assert export_difference(moved(2, 5e-8), eager, division) <= 1.0
    assert export_difference(moved(2, 2e-7), eager, division) > 1.0
    # a pCVR head's p_cvr is a model output: held to 1e-6 absolute
    assert export_difference(moved(2, 5e-7), eager, head) <= 1.0
    assert export_difference(moved(2, 2e-6), eager, head) > 1.0


def test_the_onnx_sigmoid_keeps_small_probabilities_exact():
    """onnxruntime's own Sigmoid is off by a large part of a small probability; the export
    writes 1 / (1 + exp(-x)), which keeps float32's relative precision."""
    requires_onnx()
    from recbole_cstwa.serving.export import onnx_bytes, onnx_runner

    class Sigmoid(torch.nn.Module):
        def forward(self, tokens, floats):
            return torch.sigmoid(floats) + tokens.sum(dim=1, keepdim=True).float() * 0

    logits = torch.linspace(-20, 20, 401).unsqueeze(1)
    tokens = torch.zeros(len(logits), 1, dtype=torch.long)
    data, _ = onnx_bytes(Sigmoid(), (tokens, logits))
    run, inputs = onnx_runner(data)
    assert inputs == ["tokens", "floats"]
    expected = torch.sigmoid(logits.double())
    relative = ((run(tokens, logits).double() - expected).abs() / expected).max().item()
    assert relative <= 1e-6, relative


def test_onnx_export_without_the_extra_names_the_fix(monkeypatch):
    import importlib

    from recbole_cstwa.errors import InputError
    from recbole_cstwa.serving.export import export_model

    real_import = importlib.import_module

    def without_onnxruntime(name, *args):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    # refused before the model is read: no trained model needed
    with pytest.raises(InputError, match=r'onnxruntime.*pip install "recbole-cstwa\[onnx\]"'):
        export_model(None, "unused", "onnx")


class Planted:
    """A pickled object that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_planted_pickle_is_refused_by_every_new_entry_point(trained, tmp_path, monkeypatch, capsys):
    from recbole_cstwa.quick_start import evaluate_checkpoint, load_data_and_model, run_recbole_cstwa
    from recbole_cstwa.serving.trained import load_trained

    run = trained("MLP")
    state = torch.load(run.model_file, weights_only=True)
    marker = tmp_path / "unpickled"
    state["settings"]["planted"] = Planted(str(marker))
    planted = tmp_path / "planted.pth"
    torch.save(state, planted)

    for call in (
        lambda: load_data_and_model(planted),
        lambda: load_trained(planted),
        lambda: evaluate_checkpoint(planted),
        lambda: run_recbole_cstwa(resume=str(planted)),
    ):
        with pytest.raises(CheckpointError, match="is not loaded"):
            call()
    run_predict = load_script("run_predict")
    for argv in (
        ["--input", "x.csv", "--output", "y.csv"],
        ["--export", "torchscript", "--output", "out"],
        ["--export", "onnx", "--output", "out"],
    ):
        with pytest.raises(SystemExit) as stopped:
            run_predict.main(["--model_file", str(planted), *argv])
        assert stopped.value.code == 2
        assert capsys.readouterr().err.startswith("error: Checkpoint")
    script = load_script("run_recbole_cstwa")
    monkeypatch.setattr(sys, "argv", ["run_recbole_cstwa.py", f"--model_file={planted}"])
    with pytest.raises(SystemExit):
        script.main()
    assert "is not loaded" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.slow
def test_an_earlier_format_checkpoint_evaluates_with_its_settings_given(trained, tmp_path):
    from recbole_cstwa.quick_start import evaluate_checkpoint
    from recbole_cstwa.serving.trained import load_trained

    run = trained("MLP", min_count=0)  # as the models of that format (it predates min_count)
    state = torch.load(run.model_file, weights_only=True)
    for key in ("format", "plugin_version", "settings", "data", "random_state"):
        del state[key]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match="earlier recbole-cstwa.*Fix: evaluate it with"):
        load_trained(old)
    with pytest.raises(CheckpointError, match="Fix: give --model=MLP"):
        evaluate_checkpoint(old)
    settings = tiny_config(run.config["data_path"].rsplit("/", 1)[0], tmp_path)
    result = evaluate_checkpoint(old, "MLP", config_dict=settings)
    assert result["test_result"] == run.test_result


@pytest.mark.slow
def test_model_file_evaluation_equals_the_training_runs_test_result(
    tiny_data_path, tmp_path, monkeypatch, capsys
):
    from recbole_cstwa.quick_start import run_recbole_cstwa

    result = run_recbole_cstwa(model="ESMM", config_dict=tiny_config(tiny_data_path, tmp_path, epochs=2))
    script = load_script("run_recbole_cstwa")
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["run_recbole_cstwa.py", f"--model_file={result['model_file']}"])
    script.main()
    printed = capsys.readouterr().out
    assert f"best epoch: {result['best_epoch']}; checkpoint: {result['model_file']}" in printed
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["test"])
    columns = lines[start].split()[1:]
    grid = {}
    for line in lines[start + 1 :]:
        if line.split()[:1] == ["valid"]:
            break
        task, *cells = line.split()
        grid[task] = dict(zip(columns, cells))
    from recbole_cstwa.tasks import split_metric_key

    for key, value in result["test_result"].items():
        task, metric = split_metric_key(key)
        assert float(grid[task][metric]) == pytest.approx(value, abs=5e-5), key
    from recbole_cstwa.quick_start import evaluate_checkpoint

    assert evaluate_checkpoint(result["model_file"])["test_result"] == result["test_result"]
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: RecBole's handlers are the root's
    monkeypatch.setattr(root, "level", root.level)
    evaluated = evaluate_checkpoint(result["model_file"], config_dict={"state": "INFO"})
    for handler in root.handlers:
        handler.close()
    assert evaluated["test_result"] == result["test_result"]  # its own log file, as a run's
    assert (
        evaluated["log_file"].endswith(f"-{os.getpid()}.log") and os.path.getsize(evaluated["log_file"]) > 0
    )
    assert result["best_epoch"] == load_checkpoint(result["model_file"])["epoch"]


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_parameters_of_an_uninterrupted_run(
    tiny_data_path, tmp_path, monkeypatch, request
):
    from recbole_cstwa.quick_start import run_recbole_cstwa
    from recbole_cstwa.trainer import MultiTaskTrainer, TaskTrainer

    finals = []
    fit = MultiTaskTrainer.fit

    def recording_fit(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        finals.append(copy.deepcopy(self.model.state_dict()))
        return result

    monkeypatch.setattr(MultiTaskTrainer, "fit", recording_fit)
    # Bit-equality holds on one thread: with several, the sparse embedding gradient's sums may
    # be added in another order (last bits differ; documented in docs/serving.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    settings = dict(epochs=3, stopping_step=10)
    whole = run_recbole_cstwa(
        model="MLP", config_dict=tiny_config(tiny_data_path, tmp_path / "a", **settings)
    )

    train_epoch = TaskTrainer._train_epoch

    def killed_at_epoch_two(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise KeyboardInterrupt("killed")
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(TaskTrainer, "_train_epoch", killed_at_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_recbole_cstwa(model="MLP", config_dict=tiny_config(tiny_data_path, tmp_path / "b", **settings))
    monkeypatch.setattr(TaskTrainer, "_train_epoch", train_epoch)
    (interrupted,) = glob.glob(str(tmp_path / "b" / "saved" / "MLP-*.pth"))
    resumed = run_recbole_cstwa(resume=interrupted, config_dict={"state": "ERROR"})

    assert len(finals) == 2
    for name, value in finals[0].items():
        assert torch.equal(finals[1][name], value), name
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_epoch"] == whole["best_epoch"]
