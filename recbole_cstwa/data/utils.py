"""Dataset creation for the plugin: RecBole's ``create_dataset`` with the two-label dataset."""

import os
import pickle
from logging import getLogger

from recbole.utils.argument_list import dataset_arguments

from recbole_cstwa.data.dataset import MultiTaskDataset


def create_dataset(config):
    """Builds (or reloads, like RecBole, when ``save_dataset`` wrote it) a :class:`MultiTaskDataset`.

    Every model run through the plugin, RecBole's built-in ones included, reads its data through
    this class, so both labels are checked the same way for all of them.
    """
    default_file = os.path.join(
        config["checkpoint_dir"], f"{config['dataset']}-{MultiTaskDataset.__name__}.pth"
    )
    file = config["dataset_save_path"] or default_file
    if os.path.exists(file):
        with open(file, "rb") as f:
            dataset = pickle.load(f)
        keys = dataset_arguments + [
            "seed",
            "repeatable",
            "CLICK_FIELD",
            "PURCHASE_FIELD",
            "invalid_purchase",
            "numerical_features",
            "discretization",
        ]
        if all(config[key] == dataset.config[key] for key in keys):
            getLogger().info(f"Load filtered dataset from: [{file}]")
            return dataset
    dataset = MultiTaskDataset(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset
