"""Export a trained model for serving without RecBole or this plugin: TorchScript.

:func:`export_model` traces the :class:`~recbole_cstwa.serving.module.ServingModule` of a
checkpoint (``torch.jit.trace``) into ``model.pt``, which ``torch.jit.load`` runs with torch
alone, and writes beside it:

- ``vocab/<field>.txt``: a token field's vocabulary, one token a line, line ``i`` (from 0) is
  index ``i``; line 0 is ``[PAD]``, the index of a missing or unseen token;
- ``schema.json``: the inputs (``tokens``: int64 ``(B, T)`` in the order of ``token_fields``;
  ``floats``: float32 ``(B, F)`` in the order of ``float_fields``), the output columns of the
  float32 ``(B, K)`` result, and where each vocabulary is.

TorchScript, not ONNX: the trace runs the same ATen kernels as eager torch, so the exported
model's probabilities equal the eager model's (checked on export, to ``EXPORT_TOLERANCE``) for
every model, CSTWA's held ``P`` included, with only torch needed to run it.
"""

import json
import os
import warnings

import torch

import recbole_cstwa
from recbole_cstwa.errors import InputError
from recbole_cstwa.serving.module import CVR_EPSILON, ServingModule

#: Largest difference to the eager model an export may show on its check batches.
EXPORT_TOLERANCE = 1e-6
SCHEMA_FORMAT = "recbole-cstwa-serving/1"


def example_inputs(serving, dataset, rows, seed=0):
    """``rows`` random in-vocabulary index rows (and unit-normal floats) for tracing and checks."""
    generator = torch.Generator().manual_seed(seed)
    tokens = (
        torch.stack(
            [
                torch.randint(0, dataset.num(field), (rows,), generator=generator)
                for field in serving.token_fields
            ],
            dim=1,
        )
        if serving.token_fields
        else torch.zeros(rows, 0, dtype=torch.long)
    )
    floats = torch.randn(rows, len(serving.float_fields), generator=generator)
    return tokens, floats


def export_model(trained, output_dir, check_rows=(1, 7, 256)):
    """Writes ``model.pt``, ``schema.json`` and ``vocab/`` for ``trained`` into ``output_dir``.

    The traced model is checked against the eager one on random batches of ``check_rows`` rows
    (batch sizes other than the traced one): a larger difference than ``EXPORT_TOLERANCE`` stops.

    Returns:
        dict: the schema written.
    """
    serving = ServingModule(trained).eval()
    os.makedirs(os.path.join(output_dir, "vocab"), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns where a model reads a shape, a gate count or whether CSTWA holds a P:
        # fixed for a trained model, so the trace keeps them as constants; the batch size stays
        # free, which the checks below verify on other batch sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(serving, example_inputs(serving, trained.dataset, 64), check_trace=False)
        for seed, rows in enumerate(check_rows, start=1):
            inputs = example_inputs(serving, trained.dataset, rows, seed)
            difference = (traced(*inputs) - serving(*inputs)).abs().max().item()
            if not difference <= EXPORT_TOLERANCE:
                raise InputError(
                    f"The traced {trained.config['model']} differs from the eager model by "
                    f"{difference:.3g} on {rows} rows (more than {EXPORT_TOLERANCE}): it is not "
                    "written. Fix: score with run_predict.py instead of the export."
                )
    model_path = os.path.join(output_dir, "model.pt")
    traced.save(model_path)
    vocabularies = {}
    for field in serving.token_fields:
        relative = f"vocab/{field}.txt"
        with open(os.path.join(output_dir, relative), "w", encoding="utf-8", newline="\n") as file:
            file.write("\n".join(trained.dataset.vocabulary(field)))
            file.write("\n")
        vocabularies[field] = relative
    schema = {
        "format": SCHEMA_FORMAT,
        "model": trained.config["model"],
        "dataset": trained.config["dataset"],
        "plugin_version": recbole_cstwa.__version__,
        "checkpoint": os.path.basename(trained.model_file),
        "artifact": {"file": "model.pt", "runtime": "torch.jit.load", "torch_version": torch.__version__},
        "inputs": {
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
        },
        "output": {
            "dtype": "float32",
            "shape": ["batch", len(serving.output_names)],
            "columns": serving.output_names,
        },
        "vocabularies": vocabularies,
        "unseen_token_index": 0,
        "notes": (
            "tokens: index = line number of the token in vocab/<field>.txt; a missing or unseen "
            "token is 0 ([PAD], the field counts as absent). floats: the raw value. p_cvr of a "
            "model without a pCVR head is p_purchase / p_click clipped to "
            f"[{CVR_EPSILON}, {1 - CVR_EPSILON}] (the ESMM paper's DIVISION)."
        ),
    }
    with open(os.path.join(output_dir, "schema.json"), "w", encoding="utf-8") as file:
        json.dump(schema, file, indent=2)
        file.write("\n")
    return schema
