"""RecBole's quick-start pipeline with the plugin's config, dataset, models and trainers.

Every run is prepared by :func:`prepare_run` (config, threads, seed, log file, checked dataset
and splits): training (:func:`run_recbole_cstwa`, also when resuming), a checkpoint's evaluation
(:func:`evaluate_checkpoint`) and :func:`load_data_and_model`.
"""

import os
import sys
import time
from dataclasses import dataclass
from logging import getLogger

import torch
from recbole.utils import init_seed, set_color

from recbole_cstwa import distributed
from recbole_cstwa.checkpoint import (
    SELF_CONTAINED_FORMAT,
    load_checkpoint,
    read_model_checkpoint,
    settings_before,
)
from recbole_cstwa.checkpoint_checks import checked_settings
from recbole_cstwa.config import Config
from recbole_cstwa.data import create_dataset, data_preparation
from recbole_cstwa.data.checks import check_dataset_settings, check_evaluation_splits
from recbole_cstwa.errors import CheckpointError
from recbole_cstwa.memory import peak_rss_mb, pss_mb
from recbole_cstwa.registry import get_model, get_trainer
from recbole_cstwa.run_setup import init_run_logger, set_torch_threads
from recbole_cstwa.serving.trained import (
    StoredConfig,
    build_model,
    check_vocabularies,
    read_trained_checkpoint,
)


@dataclass
class PreparedRun:
    """What :func:`prepare_run` gives: the config, the dataset and its three splits' loaders,
    and the run's log file (None when RecBole's logger writes none)."""

    config: Config
    dataset: object
    train_data: object
    valid_data: object
    test_data: object
    log_file: object


def prepare_run(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    checkpoint=None,
    model_file=None,
    config_class=Config,
):
    """Prepares one run, the same way for training, resuming, evaluating a checkpoint and
    :func:`load_data_and_model`: the config (``config_class``: :class:`StoredConfig` reads no
    command line), torch's threads, the seed, RecBole's logger with the run's own log file, the
    dataset's checks, the dataset and its loaders, the splits' checks, the log lines of the
    command line, settings, notes and dataset, and, given the ``checkpoint`` read from
    ``model_file`` (with its data description), the check that the dataset numbers tokens as the
    model's training data did.

    Settings and data are checked before the settings are logged: an error is then the run's
    only output, not the last line after a page of settings.
    """
    config = config_class(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    set_torch_threads(config)
    init_seed(config["seed"], config["reproducibility"])
    log_file = init_run_logger(config)
    logger = getLogger()
    check_dataset_settings(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    check_evaluation_splits(config, valid_data, test_data)
    logger.info(sys.argv)
    logger.info(config)
    for note in config.notes:
        logger.warning(note)
    logger.info(dataset)
    if checkpoint is not None and "data" in checkpoint:
        check_vocabularies(checkpoint, train_data._dataset, str(model_file))
    return PreparedRun(config, dataset, train_data, valid_data, test_data, log_file)


def run_recbole_cstwa(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port=5678,
    group_offset=0,
    resume=None,
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
        resume (str): a checkpoint to continue training from (RecBole's ``resume_checkpoint``:
            parameters, optimizer state, the next epoch, the best score so far, and, in checkpoints
            of this version, the random states of the save, so the run goes on as the interrupted
            one would have). Checkpoints of this version give the model, the dataset and the
            settings, which ``config_dict``, files and the command line override (``--epochs``).

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result`` (metric name -> value, e.g. ``purchase_auc``), ``epochs_trained``,
        ``kept_epoch`` (RecBole's 0-based index of the epoch whose checkpoint is scored, when
        ``saved``), ``valid_metric`` (the metric that picked it), ``sm_used`` (CSTWA: whether the
        kept model trained and is scored with its Structure Migrator; with it on, also
        ``trained_steps``, the kept model's training steps, and ``sm_steps``, those the Structure
        Migrator acted in), ``fit_seconds``, ``epoch_seconds`` (training time of each epoch), ``model_file`` (the
        best checkpoint, when ``saved``), ``best_epoch`` (the epoch it holds), ``log_file`` (this
        run's log), ``world_size``, ``peak_rss_mb`` (peak resident memory
        of each rank, MiB), ``pss_mb`` (each rank's proportional set size at the end, MiB) and, when the trainer ran stages, ``stage_times`` (seconds). Under
        DDP, rank 0's result on the machine running rank 0, ``None`` on the others.
    """
    if resume is not None:
        model, dataset, config_dict = checkpoint_settings(resume, model, dataset, config_dict, "--resume")
    if int(nproc) != 1 or int(world_size) > 0:
        if resume is not None:
            raise CheckpointError("--resume runs in one process: drop --nproc / --world_size.")
        # Settings are checked here once, so that a bad one is one message, not one a rank.
        config = Config(
            model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
        )
        # RecBole makes these folders with check-then-create, which the ranks would race on.
        os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        return distributed.launch(
            _run,
            model,
            dataset,
            config_file_list,
            config_dict,
            saved,
            nproc=nproc,
            world_size=world_size,
            ip=ip,
            port=port,
            group_offset=group_offset,
        )
    return _run(model, dataset, config_file_list, config_dict, saved, resume=resume)


def checkpoint_settings(model_file, model=None, dataset=None, config_dict=None, option="--model_file"):
    """``(model, dataset, config_dict)`` for a run on ``model_file`` (given as ``option``): a
    checkpoint of this version gives its model, dataset and settings, checked
    (:func:`~recbole_cstwa.checkpoint_checks.checked_settings`; ``model`` / ``dataset`` given
    must match, ``config_dict`` overrides); an earlier one (parameters only) needs them given, as
    in the run that trained it."""
    checkpoint = read_model_checkpoint(model_file, option)  # refuses pickles and foreign files
    if checkpoint.get("format", 1) < SELF_CONTAINED_FORMAT or "settings" not in checkpoint:
        if model is None:
            raise CheckpointError(
                f"Checkpoint [{model_file}] was written by an earlier recbole-cstwa and holds no "
                f"settings. Fix: give --model={checkpoint.get('model', '<model>')} and the settings "
                "it was trained with."
            )
        return model, dataset, {**settings_before(checkpoint), **(config_dict or {})}
    for given, stored, key in (
        (model, checkpoint["model"], "model"),
        (dataset, checkpoint["dataset"], "dataset"),
    ):
        if given is not None and str(given).lower() != str(stored).lower():
            raise CheckpointError(
                f"Checkpoint [{model_file}] holds {key} {stored}, not {given}. Fix: drop --{key} "
                f"or give --{key}={stored}."
            )
    return checkpoint["model"], checkpoint["dataset"], _run_settings(checkpoint, config_dict, model_file)


def _run_settings(checkpoint, config_dict, model_file):
    """A checkpoint's stored settings, checked, for a new run, ``config_dict`` over them."""
    settings = checked_settings(checkpoint, model_file, config_dict)
    for key in ("show_progress", "threads"):  # this run's terminal and machine decide
        settings.pop(key, None)
    settings.update(config_dict or {})
    return settings


def evaluate_checkpoint(model_file, model=None, dataset=None, config_file_list=None, config_dict=None):
    """Scores the checkpoint ``model_file`` on the dataset's validation and test splits, without
    training (``run_recbole_cstwa.py --model_file=...``).

    Returns:
        dict: as :func:`run_recbole_cstwa`'s, ``best_valid_result`` holding the validation result,
        ``best_epoch`` the epoch the checkpoint was saved at and ``log_file`` this run's log.
    """
    model, dataset, config_dict = checkpoint_settings(model_file, model, dataset, config_dict)
    checkpoint = load_checkpoint(model_file, map_location="cpu", mmap=True)
    run = prepare_run(
        model, dataset, config_file_list, config_dict, checkpoint=checkpoint, model_file=model_file
    )
    config, logger = run.config, getLogger()
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, run.train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.task_evaluator.count_training_rows(run.train_data._dataset)  # the cold-start slice
    show = config["show_progress"]
    valid_result = trainer.evaluate(
        run.valid_data, load_best_model=True, model_file=model_file, show_progress=show
    )
    test_result = trainer.evaluate(run.test_data, load_best_model=False, show_progress=show)
    logger.info(set_color("valid result", "yellow") + f": {dict(valid_result or {})}")
    logger.info(set_color("test result", "yellow") + f": {dict(test_result or {})}")
    return {
        "model": config["model"],
        "best_valid_result": valid_result,
        "test_result": test_result,
        "model_file": str(model_file),
        "best_epoch": checkpoint.get("epoch"),
        "epochs_trained": 0,
        "log_file": run.log_file,
    }


def load_data_and_model(model_file, config_dict=None):
    """RecBole's ``load_data_and_model`` for the plugin's checkpoints, which hold no pickled
    ``Config``: the dataset is read again with the settings stored in the checkpoint (checked
    to give the same vocabularies), and the model is rebuilt with its parameters (and CSTWA's
    graphs). Works for the plugin's models and RecBole's models trained through it.

    Args:
        model_file (str): a checkpoint written by the plugin's trainers (this version).
        config_dict (dict, optional): settings replacing stored ones, e.g. ``data_path`` when
            the data moved.

    The run is prepared as a training run is (:func:`prepare_run`: the dataset's checks, the
    run's own log file, ...), with the stored settings in place of the command line.

    Returns:
        tuple: ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's; the
        model is in training mode, as RecBole's is: call ``model.eval()`` before scoring.
    """
    checkpoint = read_trained_checkpoint(model_file)
    run = prepare_run(
        checkpoint["model"],
        checkpoint["dataset"],
        config_dict=_run_settings(checkpoint, config_dict, model_file),
        checkpoint=checkpoint,
        model_file=model_file,
        config_class=StoredConfig,
    )
    config = run.config
    model = build_model(config, run.train_data._dataset, checkpoint, str(model_file)).to(config["device"])
    return config, model, run.dataset, run.train_data, run.valid_data, run.test_data


def _run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, resume=None):
    """The pipeline of one process (of a DDP rank when ``config_dict`` sets ``local_rank``);
    ``resume``: the checkpoint training continues from."""
    checkpoint = load_checkpoint(resume, map_location="cpu", mmap=True) if resume is not None else None
    run = prepare_run(model, dataset, config_file_list, config_dict, checkpoint=checkpoint, model_file=resume)
    config, dataset, log_file = run.config, run.dataset, run.log_file
    train_data, valid_data, test_data = run.train_data, run.valid_data, run.test_data
    logger = getLogger()

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if resume is not None:
        trainer.resume_checkpoint(resume)
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
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "valid_metric": config["valid_metric"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epochs_trained": len(trainer.train_loss_dict),  # fewer than `epochs` after early stopping
        "kept_epoch": getattr(trainer, "kept_epoch", None),  # RecBole's 0-based epoch of the checkpoint
        "fit_seconds": fit_seconds,  # trainer.fit: stages, training and per-epoch validation
        "epoch_seconds": list(trainer.epoch_seconds),
        "model_file": trainer.saved_model_file if saved else None,
        "best_epoch": getattr(trainer, "saved_epoch", None),
        "log_file": log_file,
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
