"""Dataset and dataloader creation for the plugin, without RecBole's pickled caches.

RecBole's ``create_dataset`` / ``data_preparation`` unpickle ``<dataset>-<Class>.pth`` and
``<dataset>-for-<model>-dataloader.pth`` from ``checkpoint_dir`` when those files exist, and a
pickle runs code when it is loaded. The plugin reads neither: the processed dataset is cached as
plain arrays (:mod:`recbole_cstwa.data.cache`), keyed by the content of the data files.
"""

import os
import time
from logging import getLogger

from recbole.data.dataloader import NegSampleEvalDataLoader, TrainDataLoader
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import ModelType, set_color

from recbole_cstwa.data import cache
from recbole_cstwa.data.dataloader import CompactEvalDataLoader, CompactTrainDataLoader
from recbole_cstwa.data.dataset import MultiTaskDataset
from recbole_cstwa.errors import CacheError


def create_dataset(config):
    """Builds a :class:`MultiTaskDataset`, or loads it from the plugin's content-keyed cache.

    Every model run through the plugin, RecBole's built-in ones included, reads its data through
    this class, so both labels are checked the same way for all of them. ``cache_dataset: False``
    always reads the atomic files.
    """
    logger = getLogger()
    if config["save_dataset"] or config["dataset_save_path"]:
        logger.info(
            "save_dataset / dataset_save_path are not used: the plugin caches the processed "
            "dataset as plain arrays keyed by the content of the data files (cache_dataset)."
        )
    if config["cache_dataset"] is False:
        return MultiTaskDataset(config)

    cache.open_cache_root(config)
    key, description = cache.cache_key(config, MultiTaskDataset)
    directory = cache.cache_dir(config, key)
    if os.path.isdir(directory):
        start = time.perf_counter()
        try:
            dataset = cache.load(MultiTaskDataset, config, directory, key)
        except CacheError as error:
            logger.warning(f"Dataset cache [{directory}] cannot be used ({error}): rebuilding it.")
        else:
            logger.info(
                f"Dataset loaded from the cache [{directory}] in {time.perf_counter() - start:.1f} s."
            )
            return dataset

    dataset = MultiTaskDataset(config, file_digests=description["digests"])
    dataset._change_feat_format()
    changed = cache.changed_files(description)
    if changed:  # the key describes bytes other than those read
        logger.warning(
            f"Data file(s) {changed} changed while the dataset was read: the dataset cache is not "
            "written; this run uses what it read. Run again once the files stay unchanged."
        )
        return dataset
    try:
        cache.save(dataset, directory, key, description)
        logger.info(f"Dataset cached in [{directory}].")
    except OSError as error:
        logger.warning(f"Could not write the dataset cache [{directory}] ({error}); going on without it.")
    return dataset


def _compact(loader_class):
    """The plugin's memory-light version of RecBole's point-wise loaders (same batches)."""
    return {TrainDataLoader: CompactTrainDataLoader, NegSampleEvalDataLoader: CompactEvalDataLoader}.get(
        loader_class, loader_class
    )


def data_preparation(config, dataset):
    """RecBole's ``data_preparation`` without its pickled dataloader cache.

    Splits ``dataset`` (pre-split files or ``eval_args``), builds RecBole's samplers and its
    dataloaders for the configured evaluation (the plugin's point-wise labeled evaluation, or a
    built-in model's own). ``save_dataloaders`` is not used.
    """
    logger = getLogger()
    if config["save_dataloaders"] or config["dataloaders_save_path"]:
        logger.info(
            "save_dataloaders / dataloaders_save_path are not used: RecBole pickles dataloaders; "
            "the plugin rebuilds them from its dataset cache."
        )
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        raise ValueError("Knowledge-aware models are not supported by recbole-cstwa's data path.")
    train_dataset, valid_dataset, test_dataset = built_datasets = dataset.build()
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built_datasets)
    train_data = _compact(get_dataloader(config, "train"))(
        config, train_dataset, train_sampler, shuffle=config["shuffle"]
    )
    valid_data = _compact(get_dataloader(config, "valid"))(
        config, valid_dataset, valid_sampler, shuffle=False
    )
    test_data = _compact(get_dataloader(config, "test"))(config, test_dataset, test_sampler, shuffle=False)
    logger.info(
        set_color("[Training]: ", "pink")
        + set_color("train_batch_size", "cyan")
        + f" = [{config['train_batch_size']}]"
        + set_color(" train_neg_sample_args", "cyan")
        + f": [{config['train_neg_sample_args']}]"
    )
    logger.info(
        set_color("[Evaluation]: ", "pink")
        + set_color("eval_batch_size", "cyan")
        + f" = [{config['eval_batch_size']}]"
        + set_color(" eval_args", "cyan")
        + f": [{config['eval_args']}]"
    )
    return train_data, valid_data, test_data
