"""Export a trained model for serving without RecBole or this plugin: TorchScript or ONNX.

:func:`export_model` traces the :class:`~recbole_cstwa.serving.module.ServingModule` of a
checkpoint into ``model.pt`` (TorchScript, ``torch.jit.trace``; ``torch.jit.load`` runs it with
torch alone) or ``model.onnx`` (ONNX; ``onnxruntime`` runs it without torch), and writes beside it:

- ``vocab/<field>.txt``: a token field's vocabulary, one token a line, line ``i`` (from 0) is
  index ``i``; line 0 is ``[PAD]``, the index of a missing token;
- ``schema.json``: the inputs (``tokens``: int64 ``(B, T)`` in the order of ``token_fields``;
  ``floats``: float32 ``(B, F)`` in the order of ``float_fields``), the output columns of the
  float32 ``(B, K)`` result, where each vocabulary is, and ``unseen_token_index``: each field's
  index for a token not in its vocabulary (the vocabulary's line count, one past its last line,
  for a model with out-of-vocabulary rows, ``min_count`` > 0: scored with the field's trained
  out-of-vocabulary row; otherwise 0, an absent field).

Both formats record one trace of the module: the settings a trained model fixes (a gate count,
whether CSTWA holds a ``P``) become constants, the batch size stays free. TorchScript runs the same
ATen kernels as eager torch; ONNX runs onnxruntime's, whose sums round differently (about 1e-7
of a probability). Either export is checked in memory against the eager model on batches of
other sizes than the traced one, and nothing is written when a probability differs by more than
``EXPORT_TOLERANCE``. The DIVISION ``p_cvr`` (``p_purchase / p_click``, of models without a pCVR
head) carries the relative rounding of both heads: it is held to ``DIVISION_TOLERANCE`` of its
value instead (measured: 1.0e-6 absolute at most on 4,096 test rows of the 4M-impression
benchmark's MLP). The folder is written as one unit (:func:`recbole_cstwa.file_writes.write_directory`):
a new folder beside it, filled, then renamed onto it, so a kill or a full disk leaves the earlier
export whole, no file of an earlier export stays beside a new one, and nothing is written through
a link planted in the old folder. A folder holding other files than an export's is refused.

A TorchScript ``model.pt`` is code: ``torch.jit.load`` runs TorchScript the file holds (a
module's ``__setstate__`` runs as it loads, before any call), so load one only from a place you
trust. ``model.onnx`` is data: onnxruntime runs its nodes with its own kernels, and runs no Python
(a node of an operator it does not know is refused when the session is made).

ONNX uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), the
same trace as the TorchScript export: torch's newer ``torch.export``-based exporter refuses
CSTWA, whose held-``P`` check is a branch on a tensor's value. ONNX needs the ``onnx`` extra
(``pip install "recbole-cstwa[onnx]"``: ``onnx`` to write, ``onnxruntime`` to check); an input
the model never reads (``floats`` of a model without numerical fields) is left out of the ONNX
graph, and ``schema.json`` lists the inputs the file takes. The ONNX graph writes a sigmoid as
``1 / (1 + exp(-x))``: onnxruntime's own ``Sigmoid`` kernel is accurate to about 1e-7 absolute,
so its relative error grows as the probability shrinks (2e-4 of a purchase probability near
3.6e-4 on the 4M-impression benchmark's MLP, and through the DIVISION ``p_cvr`` 1.3e-5 of a
pCVR); its ``Exp`` keeps the relative error near float32's.
"""

import contextlib
import importlib
import io
import json
import os
import warnings

import torch

import recbole_cstwa
from recbole_cstwa.errors import InputError
from recbole_cstwa.evaluator import DIVISION_CLIP
from recbole_cstwa.file_writes import write_directory
from recbole_cstwa.serving.module import ServingModule

#: Largest difference to the eager model an export may show on its check batches.
EXPORT_TOLERANCE = 1e-6
#: Largest relative difference of a DIVISION p_cvr (module docstring).
DIVISION_TOLERANCE = 1e-5
#: 2: ``unseen_token_index`` is a field -> index map (1: the number 0 for every field).
SCHEMA_FORMAT = "recbole-cstwa-serving/2"
#: ``--export`` choices -> the artifact's file name.
EXPORT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
#: What an export folder holds (of either format): a folder holding anything else is not replaced.
EXPORT_ENTRIES = (*EXPORT_FILES.values(), "schema.json", "vocab")
#: The serving module's inputs, in ``forward``'s order (also their names in the ONNX graph).
INPUT_NAMES = ("tokens", "floats")
#: Outputs' name in the ONNX graph (TorchScript's are positional).
ONNX_OUTPUT = "probabilities"
#: torch's own ``aten::sigmoid`` symbolic is registered at opset 9 and serves every later opset:
#: the replacement below, registered at the same opset, takes its place (Div, Add, Exp, Neg: all
#: opset 1).
ONNX_SIGMOID_OPSET = 9


def export_difference(exported, eager, serving):
    """Largest difference of ``exported`` to ``eager`` ``(B, K)`` probabilities, in units of the
    tolerance: absolute over ``EXPORT_TOLERANCE``; a DIVISION ``p_cvr``'s relative to its value
    over ``DIVISION_TOLERANCE`` (module docstring). Above 1 the export is refused."""
    scaled = (exported - eager).abs() / EXPORT_TOLERANCE
    if "cvr" in serving.outputs and "cvr" not in serving.native_outputs:
        column = serving.outputs.index("cvr")
        relative = (exported - eager)[:, column].abs() / eager[:, column].abs().clamp_min(1e-30)
        scaled[:, column] = relative / DIVISION_TOLERANCE
    return scaled.max().item()


def example_inputs(serving, dataset, rows, seed=0):
    """``rows`` random index rows (and unit-normal floats) for tracing and checks: in-vocabulary
    indices, and the unseen index where a field has one past its vocabulary (``min_count``)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = (
        torch.stack(
            [
                torch.randint(
                    0, dataset.num(field) + bool(serving.unseen_index[field]), (rows,), generator=generator
                )
                for field in serving.token_fields
            ],
            dim=1,
        )
        if serving.token_fields
        else torch.zeros(rows, 0, dtype=torch.long)
    )
    floats = torch.randn(rows, len(serving.float_fields), generator=generator)
    return tokens, floats


def onnx_modules():
    """``(onnx, onnxruntime)``, or a one-line error naming the extra that installs them."""
    try:
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError as error:
        raise InputError(
            f"--export=onnx needs the packages onnx and onnxruntime ({error}). Fix: "
            'pip install "recbole-cstwa[onnx]", or --export=torchscript (torch only).'
        ) from None


def sigmoid_by_exp(graph, x):
    """ONNX symbolic of ``aten::sigmoid`` as ``1 / (1 + exp(-x))`` (module docstring: why)."""
    one = graph.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
    return graph.op("Div", one, graph.op("Add", one, graph.op("Exp", graph.op("Neg", x))))


@contextlib.contextmanager
def sigmoid_by_exp_registered():
    """:func:`sigmoid_by_exp` as torch's ``aten::sigmoid`` symbolic inside the block only (torch
    keeps a registration process-wide; leaving it removes it, and torch's own applies again)."""
    torch.onnx.register_custom_op_symbolic("aten::sigmoid", sigmoid_by_exp, ONNX_SIGMOID_OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::sigmoid", ONNX_SIGMOID_OPSET)


def onnx_bytes(serving, example):
    """``(data, opset)``: ``serving`` traced on ``example`` as the bytes of an ONNX model checked
    by ``onnx``, and its default-domain opset."""
    onnx, _ = onnx_modules()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), sigmoid_by_exp_registered():
        # torch warns that the TorchScript-based exporter is deprecated: the module docstring
        # says why it is the one used.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            serving,
            example,
            buffer,
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[ONNX_OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in [*INPUT_NAMES, ONNX_OUTPUT]},
        )
    data = buffer.getvalue()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    if any(node.op_type == "Sigmoid" for node in model.graph.node):
        raise InputError(
            f"This torch ({torch.__version__}) exported a Sigmoid node despite the replacement "
            "(recbole_cstwa.serving.export.sigmoid_by_exp), whose absence keeps small probabilities "
            "exact in onnxruntime. Fix: --export=torchscript."
        )
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return data, opset


def onnx_runner(model, threads=1):
    """``(run, inputs)``: ``run(tokens, floats)`` scores torch tensors with the ONNX ``model`` (a
    path or its bytes) in onnxruntime (``threads`` threads); ``inputs``: the inputs it takes."""
    _, onnxruntime = onnx_modules()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    inputs = [node.name for node in session.get_inputs()]

    def run(tokens, floats):
        given = dict(zip(INPUT_NAMES, (tokens, floats)))
        (output,) = session.run([ONNX_OUTPUT], {name: given[name].numpy() for name in inputs})
        return torch.from_numpy(output)

    return run, inputs


def traced_artifact(serving, example, export_format):
    """``(exported, data, inputs, runtime)`` of one format: the traced model as a callable, the
    file's bytes, the inputs it takes and the schema's runtime entries."""
    if export_format == "onnx":
        data, opset = onnx_bytes(serving, example)
        exported, inputs = onnx_runner(data)
        runtime = {
            "runtime": "onnxruntime.InferenceSession",
            "opset": opset,
            "checked_with_onnxruntime": onnx_modules()[1].__version__,
            "torch_version": torch.__version__,
        }
        return exported, data, inputs, runtime
    exported = torch.jit.trace(serving, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(exported, buffer)
    runtime = {"runtime": "torch.jit.load", "torch_version": torch.__version__}
    return exported, buffer.getvalue(), list(INPUT_NAMES), runtime


def export_model(trained, output_dir, export_format="torchscript", check_rows=(1, 7, 256)):
    """Writes the ``export_format`` artifact (:data:`EXPORT_FILES`), ``schema.json`` and
    ``vocab/`` for ``trained`` as the folder ``output_dir`` (new, or an earlier export, which it
    replaces as one unit: module docstring).

    The exported model is checked in memory against the eager one on random batches of
    ``check_rows`` rows (batch sizes other than the traced one): a larger difference than the
    tolerance (``EXPORT_TOLERANCE``; ``DIVISION_TOLERANCE`` of a DIVISION ``p_cvr``) stops before
    any file is written, so a folder's earlier export stays as it was.

    Returns:
        dict: the schema written.
    """
    if export_format not in EXPORT_FILES:
        raise InputError(
            f"--export={export_format} is not a format. Fix: --export={' or '.join(EXPORT_FILES)}."
        )
    check_export_folder(output_dir)
    if export_format == "onnx":
        onnx_modules()  # before any work: a missing extra is the first thing said
    serving = ServingModule(trained).eval()
    example = example_inputs(serving, trained.dataset, 64)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns where a model reads a shape, a gate count or whether CSTWA holds a P:
        # fixed for a trained model, so the trace keeps them as constants; the batch size stays
        # free, which the checks below verify on other batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exported, data, inputs, runtime = traced_artifact(serving, example, export_format)
        for seed, rows in enumerate(check_rows, start=1):
            batch = example_inputs(serving, trained.dataset, rows, seed)
            difference = export_difference(exported(*batch), serving(*batch), serving)
            if not difference <= 1.0:
                raise InputError(
                    f"The {export_format} export of {trained.config['model']} differs from the eager "
                    f"model by {difference:.3g} times the tolerance on {rows} rows ({EXPORT_TOLERANCE} "
                    f"absolute; {DIVISION_TOLERANCE} relative for the DIVISION p_cvr): it is not written. "
                    "Fix: score with run_predict.py instead of the export."
                )
    files = {EXPORT_FILES[export_format]: data}  # written together below
    vocabularies = {}
    for field in serving.token_fields:
        relative = f"vocab/{field}.txt"
        files[relative] = ("\n".join(trained.dataset.vocabulary(field)) + "\n").encode("utf-8")
        vocabularies[field] = relative
    described = {
        "tokens": {
            "dtype": "int64",
            "shape": ["batch", len(serving.token_fields)],
            "fields": serving.token_fields,
        },
        "floats": {
            "dtype": "float32",
            "shape": ["batch", len(serving.float_fields)],
            "fields": serving.float_fields,
        },
    }
    schema = {
        "format": SCHEMA_FORMAT,
        "model": trained.config["model"],
        "dataset": trained.config["dataset"],
        "plugin_version": recbole_cstwa.__version__,
        "checkpoint": os.path.basename(trained.model_file),
        "artifact": {"file": EXPORT_FILES[export_format], "format": export_format, **runtime},
        "inputs": {name: described[name] for name in inputs},
        "output": {
            **({"name": ONNX_OUTPUT} if export_format == "onnx" else {}),
            "dtype": "float32",
            "shape": ["batch", len(serving.output_names)],
            "columns": serving.output_names,
        },
        "vocabularies": vocabularies,
        "unseen_token_index": dict(serving.unseen_index),
        "notes": (
            "tokens: index = line number of the token in vocab/<field>.txt; a missing token is 0 "
            "([PAD], the field counts as absent); a token not in vocab/<field>.txt is "
            "unseen_token_index[<field>] (its line count, one past its last line: the field's "
            "trained out-of-vocabulary row; or 0: absent). floats: the raw value. p_cvr of a "
            "model without a pCVR head is p_purchase / p_click clipped to "
            f"[{DIVISION_CLIP}, {1 - DIVISION_CLIP}] (the ESMM paper's DIVISION)."
        ),
    }
    files["schema.json"] = (json.dumps(schema, indent=2) + "\n").encode("utf-8")
    write_export(output_dir, files)
    return schema


def check_export_folder(output_dir):
    """Refuses an export folder that is a file, or a folder holding more than an export's files
    (:data:`EXPORT_ENTRIES`): the export replaces the whole folder. A link there is replaced."""
    if os.path.islink(output_dir) or not os.path.lexists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise InputError(
            f"--output [{output_dir}] is a file: an export is a folder (the model, schema.json, "
            "vocab/). Fix: name a new folder, or an earlier export's."
        )
    others = sorted(set(os.listdir(output_dir)) - set(EXPORT_ENTRIES))
    if others:
        raise InputError(
            f"--output [{output_dir}] holds {others[:5]}, which no export writes: an export "
            "replaces its whole folder, and these would be lost. Fix: name a new folder, or move "
            "them out."
        )


def write_export(output_dir, files):
    """Writes ``files`` as the folder ``output_dir`` in one unit
    (:func:`~recbole_cstwa.file_writes.write_directory`): a kill or a full disk leaves the earlier
    export whole, and no file of it stays beside the new one; a write error is one line."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
        write_directory(output_dir, files)
    except InputError:
        raise  # a full disk: names the folder and the space needed
    except OSError as error:
        raise InputError(
            f"Cannot write the export [{output_dir}]: {error.strerror or error}. Fix: name an "
            "--output in a folder you can write to."
        ) from None
