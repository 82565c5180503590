"""``recbole-cstwa-predict`` (or ``python run_predict.py``): score new impressions with a trained model, or export it for serving.

    python run_predict.py --model_file=saved/MLP-....pth --input=new.csv --output=scores.csv \
                          [--keys user_id item_id] [--batch_size=8192] [--threads=N]
    python run_predict.py --model_file=saved/MLP-....pth --export=torchscript|onnx --output=served/

The input is CSV, TSV, parquet or a RecBole .inter file with the model's feature columns (any
order, other columns ignored, labels optional); the output (CSV or parquet) holds one row an
input row: the --keys columns, then p_click, p_purchase, p_cvr (a RecBole model: its label's
probability). Unseen tokens score as absent fields and are counted; with label columns the
run's metrics are printed. --export writes a TorchScript (torch only) or ONNX (onnxruntime; the
onnx extra) model, its vocabularies and schema.json (docs/serving.md). The scores and the export
are written whole or not at all; a file, cell or setting that cannot be used is one ``error:``
line (exit status 2) naming it and the fix (docs/serving.md, "What scoring and export refuse").
"""

import argparse

from recbole_cstwa.commands.cli import reported_errors
from recbole_cstwa.serving.export import EXPORT_FILES, export_model
from recbole_cstwa.serving.predict import predict_file
from recbole_cstwa.serving.trained import load_trained


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_file", required=True, help="a checkpoint written by run_recbole_cstwa.py")
    parser.add_argument("--input", help="impressions to score: .csv, .tsv, .parquet or .inter")
    parser.add_argument("--output", required=True, help="scores (.csv or .parquet), or the export folder")
    parser.add_argument("--keys", nargs="*", default=[], help="input columns copied to the output")
    parser.add_argument(
        "--batch_size", type=int, default=8192, help="rows a model call, 1 or more (default 8192)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads, 1 to 4 times the CPUs (default: torch's)"
    )
    parser.add_argument("--export", choices=list(EXPORT_FILES), help="write a model for serving instead")
    args = parser.parse_args(argv)
    with reported_errors():
        trained = load_trained(args.model_file)
        if args.export:
            schema = export_model(trained, args.output, args.export)
            artifact = schema["artifact"]
            print(
                f"exported {schema['model']} to {args.output}/{artifact['file']} ({args.export}), schema.json, vocab/"
            )
            print(
                "inputs: "
                + ", ".join(f"{name} {value['fields']}" for name, value in schema["inputs"].items())
            )
            print(f"output columns: {schema['output']['columns']}")
            return
        if not args.input:
            parser.error("--input is needed to score (or --export to export)")
        report = predict_file(
            trained, args.input, args.output, keys=args.keys, batch_size=args.batch_size, threads=args.threads
        )
    for line in report.lines():
        print(line)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
