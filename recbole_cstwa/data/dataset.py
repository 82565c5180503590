"""The two-label impressions dataset: RecBole's ``Dataset`` with checked click and purchase labels."""

import os

import numpy as np
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType

from recbole_cstwa.errors import InputError

SPLIT_NAMES = ("train", "valid", "test")


class DataFormatError(InputError):
    """Bad input data: the message names the file, the field and the fix."""


def _line_numbers(mask, limit=5):
    """1-based file line numbers (the header is line 1) of the first ``limit`` rows in ``mask``."""
    rows = np.flatnonzero(np.asarray(mask))[:limit]
    return ", ".join(str(row + 2) for row in rows)


class MultiTaskDataset(Dataset):
    """Impressions with a click label and a purchase label (``CLICK_FIELD``, ``PURCHASE_FIELD``).

    Both labels are read as RecBole ``float`` columns and are never features. Every interaction
    file is checked when it is read: each label column exists, is declared ``float``, holds no
    missing value and only 0 or 1, and the file is not empty. Rows with a purchase but no click
    cannot happen in the click -> purchase funnel: they are dropped with a logged count, or
    rejected when ``invalid_purchase: error``. Splits come from RecBole's ``eval_args`` ratios or
    from pre-split files through ``benchmark_filename``; an empty split is an error.
    """

    def _get_field_from_config(self):
        super()._get_field_from_config()
        self.click_field = self.config["CLICK_FIELD"]
        self.purchase_field = self.config["PURCHASE_FIELD"]
        self.label_fields = (self.click_field, self.purchase_field)
        self.dropped_invalid_purchases = 0

    def _load_data(self, token, dataset_path):
        if not os.path.isdir(dataset_path):
            # RecBole would try to download a dataset it knows by name; ours are local files.
            raise DataFormatError(
                f"Dataset folder [{dataset_path}] does not exist: put the atomic files "
                f"({token}.inter or {token}.<split>.inter, {token}.user, {token}.item) there, or "
                "set data_path to the folder that holds the dataset's folder (the embedded "
                "synthetic-ccp is found from an editable install, pip install -e .)."
            )
        super()._load_data(token, dataset_path)

    def _load_inter_feat(self, token, dataset_path):
        single_file = os.path.join(dataset_path, f"{token}.inter")
        if self.benchmark_filename_list is None and not os.path.isfile(single_file):
            split_files = [
                name
                for name in SPLIT_NAMES
                if os.path.isfile(os.path.join(dataset_path, f"{token}.{name}.inter"))
            ]
            hint = (
                f"; pre-split files for {split_files} are there: set benchmark_filename: "
                f'{split_files} (command line: --benchmark_filename="{split_files}")'
                if split_files
                else ""
            )
            raise DataFormatError(f"Interaction file [{single_file}] does not exist{hint}.")
        if self.benchmark_filename_list is not None:
            for name in self.benchmark_filename_list:
                path = os.path.join(dataset_path, f"{token}.{name}.inter")
                if not os.path.isfile(path):
                    raise DataFormatError(
                        f"Interaction file [{path}] named by benchmark_filename "
                        f"{list(self.benchmark_filename_list)} does not exist."
                    )
        super()._load_inter_feat(token, dataset_path)

    def _load_feat(self, filepath, source):
        try:
            feat = super()._load_feat(filepath, source)
        except ValueError as error:
            raise DataFormatError(
                f"Cannot read [{filepath}]: {error}. Check the header (name:type, separated by "
                f"field_separator {self.config['field_separator']!r}) and that the label columns "
                f"{list(self.label_fields)} are declared float and hold 0 or 1."
            ) from None
        if source == FeatureSource.INTERACTION:
            feat = self._check_labels(feat, filepath)
        return feat

    def _check_labels(self, feat, filepath):
        if feat is None or len(feat) == 0:
            raise DataFormatError(
                f"[{filepath}] holds no impressions: every split needs rows (check the file, or "
                "benchmark_filename / eval_args)."
            )
        for field in self.label_fields:
            if field not in feat.columns:
                raise DataFormatError(
                    f"[{filepath}] has no label column [{field}] (columns read: "
                    f"{list(feat.columns)}). Add a column '{field}:float' with 0/1 values, set "
                    "CLICK_FIELD / PURCHASE_FIELD to the names your file uses, or add it to "
                    "load_col."
                )
            if self.field2type[field] != FeatureType.FLOAT:
                raise DataFormatError(
                    f"[{filepath}] declares label [{field}] as {self.field2type[field].value}: "
                    f"declare it '{field}:float' in the header."
                )
            values = feat[field].to_numpy()
            missing = np.isnan(values)
            if missing.any():
                raise DataFormatError(
                    f"[{filepath}] label [{field}] is missing in {int(missing.sum())} rows "
                    f"(lines {_line_numbers(missing)}). Fill or drop those rows: a missing "
                    "label would otherwise be filled with the column mean."
                )
            not_binary = (values != 0) & (values != 1)
            if not_binary.any():
                examples = sorted(set(values[not_binary][:5].tolist()))
                raise DataFormatError(
                    f"[{filepath}] label [{field}] must be 0 or 1, found {examples} in "
                    f"{int(not_binary.sum())} rows (lines {_line_numbers(not_binary)})."
                )

        invalid = (feat[self.purchase_field].to_numpy() == 1) & (feat[self.click_field].to_numpy() == 0)
        if invalid.any():
            count = int(invalid.sum())
            if self.config["invalid_purchase"] == "error":
                raise DataFormatError(
                    f"[{filepath}] has {count} rows with {self.purchase_field}=1 and "
                    f"{self.click_field}=0 (lines {_line_numbers(invalid)}): a purchase needs a "
                    "click. Fix them, or set invalid_purchase: drop to drop them."
                )
            feat = feat.loc[~invalid].reset_index(drop=True)
            self.dropped_invalid_purchases += count
            self.logger.warning(
                f"[{filepath}]: dropped {count} rows with {self.purchase_field}=1 and "
                f"{self.click_field}=0 (a purchase needs a click; invalid_purchase: drop)."
            )
            if len(feat) == 0:
                raise DataFormatError(f"[{filepath}] holds no valid impressions after the drop.")
        return feat

    def build(self):
        datasets = super().build()
        for name, split in zip(SPLIT_NAMES, datasets):
            if len(split) == 0:
                raise DataFormatError(
                    f"The {name} split of dataset [{self.dataset_name}] is empty "
                    f"({len(self.inter_feat)} impressions, eval_args split "
                    f"{self.config['eval_args']['split']}). Use more data or larger ratios."
                )
            if name != "train" and len(split) < 2:
                # RecBole's AUC and LogLoss fail on a single impression (an IndexError).
                raise DataFormatError(
                    f"The {name} split of dataset [{self.dataset_name}] holds {len(split)} impression "
                    f"({len(self.inter_feat)} in all, eval_args split "
                    f"{self.config['eval_args']['split']}): scoring needs at least 2. Use more data "
                    "or larger ratios."
                )
        return datasets
