"""RecBole's quick-start pipeline with the plugin's config, dataset, models and trainers."""

import os
import sys
import time
from logging import getLogger

import torch
from recbole.utils import init_logger, init_seed, set_color

from recbole_cstwa import distributed
from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.data.checks import check_dataset_settings, check_evaluation_splits
from recbole_cstwa.memory import peak_rss_mb, pss_mb
from recbole_cstwa.registry import get_model, get_trainer


def run_recbole_cstwa(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
    nproc=1, world_size=-1, ip="localhost", port=5678, group_offset=0,
):
    """Trains ``model`` on ``dataset``, early-stops on ``valid_metric`` and scores the test set.

    Args:
        model (str or class): a plugin model (CSTWA, ESMM, ...) or a RecBole context-aware model.
        dataset (str): dataset name; default: the embedded ``synthetic-ccp``.
        config_file_list (list): YAML files; config_dict (dict): parameters; both under the
            command line in priority, as in RecBole.
        saved (bool): save the best checkpoint and reload it for the test set.
        nproc, world_size, ip, port, group_offset: distributed data-parallel training, as
            RecBole's ``run``: ``nproc`` processes here (one a GPU; CPU processes without one),
            ranks ``group_offset ..`` of ``world_size`` in all, meeting at ``ip:port``
            (see :mod:`recbole_cstwa.distributed`). The default is one process.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result`` (metric name -> value, e.g. ``purchase_auc``), ``epochs_trained``,
        ``kept_epoch`` (RecBole's 0-based index of the epoch whose checkpoint is scored, when
        ``saved``), ``sm_used`` (CSTWA: whether the kept model trained and is scored with its
        Structure Migrator), ``fit_seconds``, ``epoch_seconds`` (training time of each epoch), ``model_file`` (the
        best checkpoint, when ``saved``), ``world_size``, ``peak_rss_mb`` (peak resident memory
        of each rank, MiB), ``pss_mb`` (each rank's proportional set size at the end, MiB) and, when the trainer ran stages, ``stage_times`` (seconds). Under
        DDP, rank 0's result on the machine running rank 0, ``None`` on the others.
    """
    if int(nproc) != 1 or int(world_size) > 0:
        # Settings are checked here once, so that a bad one is one message, not one a rank.
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
        # RecBole makes these folders with check-then-create, which the ranks would race on.
        os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        return distributed.launch(
            _run, model, dataset, config_file_list, config_dict, saved,
            nproc=nproc, world_size=world_size, ip=ip, port=port, group_offset=group_offset,
        )
    return _run(model, dataset, config_file_list, config_dict, saved)


def _run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """The pipeline of one process (of a DDP rank when ``config_dict`` sets ``local_rank``)."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    for note in config.notes:
        logger.warning(note)

    check_dataset_settings(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    check_evaluation_splits(config, valid_data, test_data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    fit_start = time.perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    fit_seconds = time.perf_counter() - fit_start
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    logger.info(set_color("best valid ", "yellow") + f": {dict(best_valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict(test_result or {})}")
    result = {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epochs_trained": len(trainer.train_loss_dict),  # fewer than `epochs` after early stopping
        "kept_epoch": getattr(trainer, "kept_epoch", None),  # RecBole's 0-based epoch of the checkpoint
        "fit_seconds": fit_seconds,  # trainer.fit: stages, training and per-epoch validation
        "epoch_seconds": list(trainer.epoch_seconds),
        "model_file": trainer.saved_model_file if saved else None,
        "world_size": 1,
        "peak_rss_mb": [round(peak_rss_mb(), 1)],
        "pss_mb": [round(pss_mb(), 1)],
    }
    if distributed.is_distributed(config):
        result["world_size"] = config["world_size"]
        memory = torch.tensor([[peak_rss_mb(), pss_mb()]], dtype=torch.float64)
        memory = distributed.gather_tensor(memory, config["device"]).tolist()
        result["peak_rss_mb"] = [round(peak, 1) for peak, _ in memory]
        result["pss_mb"] = [round(pss, 1) for _, pss in memory]
    logger.info(
        f"memory of each rank (MiB): peak resident {result['peak_rss_mb']}, proportional now {result['pss_mb']}"
    )
    if hasattr(model, "kept_model_facts"):  # the plugin's models: e.g. CSTWA's sm_used
        result.update(model.kept_model_facts())
    if getattr(trainer, "stage_times", None):
        result["stage_times"] = dict(trainer.stage_times)
    return result


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """One trial for RecBole's ``HyperTuning``: trains with ``config_dict`` and reports results."""
    return run_recbole_cstwa(config_dict=config_dict, config_file_list=config_file_list, saved=saved)
