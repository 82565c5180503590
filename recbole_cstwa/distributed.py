"""Distributed data-parallel training (PyTorch DDP) for every model the plugin runs.

RecBole 1.2.1 has the engine (``recbole.quick_start.run(..., nproc, world_size, ip, port,
group_offset)``: one process a device, ``DistributedSampler`` shards, gradients all-reduced by
``DistributedDataParallel``) but three defects this module works around, without patching it:

1. ``Config._init_device`` hard-codes the ``nccl`` backend and a CUDA device, so DDP cannot run
   on CPU. :func:`init_rank_device` (called by the plugin's ``Config._init_device``) picks
   ``nccl`` on CUDA and ``gloo`` on CPU, by the device the rank gets.
2. ``AbstractTrainer`` wraps the model with ``device_ids=[local_rank]``, which PyTorch refuses for
   a CPU model, and with ``broadcast_buffers=True``, which re-sends every buffer from rank 0 at each
   batch (CSTWA's entity feature tables: megabytes a batch at Ali-CCP size; its Curse Escaper
   window would be overwritten by rank 0's). :class:`DistributedTrainerMixin` wraps it for the
   device at hand, without buffer broadcasts; persistent buffers (e.g. BatchNorm statistics) are
   sent from rank 0 before every evaluation (:func:`broadcast_persistent_buffers`), so the model
   evaluated is rank 0's, the one the checkpoint holds.
3. Evaluation: RecBole computes each metric on each rank's shard and averages them, weighted
   (``Trainer._map_reduce``): exact for LogLoss, not for AUC. Its ``DistributedSampler`` also
   pads the shards to equal length with repeated rows, so a few rows are scored twice. Here
   each rank drops its padded rows (:func:`unpadded_count`), and the collected (score, label)
   tensors of every rank are gathered (:func:`gather_data_struct`) before RecBole's metrics
   run, on the whole evaluation set, on every rank: the metrics are those of a single-process
   evaluation of the same parameters, identical on every rank, so early stopping and the best
   checkpoint agree. Only rank 0 writes checkpoints; loading the best one reads rank 0's file
   there and sends its parameters to the others (no shared folder needed across machines).

The model stays ``trainer.model`` (the real module, as in RecBole); the DDP wrapper is
``trainer.distributed_model`` and only used to hook the gradient all-reduce (RecBole's
``set_reduce_hook`` / ``sync_grad_loss`` in ``Trainer._train_epoch``). So every call the
plugin's trainers make (``calculate_loss``, ``predict_tasks``, ``update_structure``,
``set_graphs``) reaches the real model on every rank.
"""

import copy
import errno
import os
import socket

import torch
import torch.distributed as dist
from recbole.trainer import AbstractTrainer

from recbole_cstwa.errors import DistributedRunError

#: Seconds a rank waits for the others (``ddp_timeout``), e.g. for rank 0's CSTWA pre-training.
DEFAULT_TIMEOUT = 4 * 3600


# ----- launching -----------------------------------------------------------------------------
def launch(
    run,
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
):
    """Runs ``run(model, dataset, config_file_list, config_dict, saved)`` on ``nproc`` processes.

    As RecBole's ``run``: ranks ``group_offset .. group_offset + nproc - 1`` of ``world_size``
    (default ``nproc``: one machine) start here and meet at ``tcp://ip:port`` (rank 0's machine).
    Returns rank 0's result on the machine running rank 0, else ``None``.
    """
    nproc, world_size, group_offset = int(nproc), int(world_size), int(group_offset)
    if world_size == -1:
        world_size = nproc
    if nproc < 1 or world_size < nproc or not 0 <= group_offset <= world_size - nproc:
        raise DistributedRunError(
            f"--nproc={nproc}, --world_size={world_size}, --group_offset={group_offset} do not fit: "
            "each machine runs nproc ranks starting at group_offset, and world_size is the total "
            "(e.g. 2 machines of 2: --nproc=2 --world_size=4, --group_offset=0 and 2)."
        )
    if group_offset == 0:  # this machine runs rank 0, which listens on the port
        check_port_free(int(port))
    import torch.multiprocessing as mp

    config_dict = dict(config_dict or {})
    config_dict.update(world_size=world_size, ip=str(ip), port=str(port), nproc=nproc, offset=group_offset)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_rank,
        args=(run, model, dataset, config_file_list, config_dict, saved, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def check_port_free(port):
    """Refuses a port rank 0 cannot listen on, before any rank starts (PyTorch would end in a
    ``DistNetworkError`` traceback after its connection timeout).

    The probe binds as torch's store does, with ``SO_REUSEADDR``: a port whose last connection
    is still in TIME_WAIT (the previous run, a minute ago) is free for it; one another program
    listens on is not.
    """
    if not 0 < port < 65536:
        raise DistributedRunError(f"--port={port} is no TCP port: give one in 1..65535, e.g. --port=5678.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            if error.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            reason = "is taken by another program" if error.errno == errno.EADDRINUSE else "needs privileges"
            raise DistributedRunError(
                f"port {port} {reason}: rank 0 listens there to gather the ranks. Fix: choose a free "
                f"port with --port (e.g. --port={port + 1 if port < 65535 else 29500})."
            ) from None


def _run_rank(local_rank, run, model, dataset, config_file_list, config_dict, saved, queue):
    """One rank: the single-process pipeline with ``local_rank`` set (the config then joins the
    process group), its result handed to the launcher by global rank 0."""
    config_dict = {**config_dict, "local_rank": local_rank}
    try:
        result = run(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict=config_dict,
            saved=saved,
        )
        if dist.get_rank() == 0:
            queue.put(result)
        # Every rank past its last collective before any tears down: a rank leaving while gloo's
        # threads still serve another's request ended in a rare SIGABRT ("terminate called
        # without an active exception") of the second of two back-to-back runs.
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_rank_device(config_dict):
    """Joins the process group of a DDP run and sets ``device`` (the plugin's ``_init_device``).

    ``nccl`` with ``cuda:<local_rank>`` when CUDA is usable (``use_gpu`` and a ``gpu_id``),
    ``gloo`` with the CPU otherwise. Ranks other than 0 log errors only, as in RecBole.
    ``ddp_timeout`` (seconds, default 4 hours) bounds how long a rank waits for the others.
    """
    gpu_id = config_dict["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    config_dict["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    local_rank, nproc = int(config_dict["local_rank"]), int(config_dict["nproc"])
    use_cuda = bool(config_dict.get("use_gpu", True)) and len(gpu_id) > 0 and torch.cuda.is_available()
    if use_cuda:
        if torch.cuda.device_count() < nproc:
            raise DistributedRunError(
                f"--nproc={nproc} ranks need {nproc} GPUs, but gpu_id [{gpu_id}] gives "
                f"{torch.cuda.device_count()}: set gpu_id to {nproc} GPUs (e.g. --gpu_id=0,1)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        import datetime

        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{config_dict['ip']}:{config_dict['port']}",
            rank=local_rank + int(config_dict["offset"]),
            world_size=int(config_dict["world_size"]),
            # Ranks wait for rank 0 through CSTWA's pre-training: PyTorch's 30 minutes can be short.
            timeout=datetime.timedelta(seconds=float(config_dict.get("ddp_timeout") or DEFAULT_TIMEOUT)),
        )
    config_dict["device"] = device
    config_dict["single_spec"] = False
    if local_rank != 0:
        config_dict["state"] = "error"
        config_dict["show_progress"] = False
        config_dict["verbose"] = False


def is_distributed(config):
    return not config["single_spec"]


def is_rank_zero():
    return not dist.is_initialized() or dist.get_rank() == 0


# ----- the model -------------------------------------------------------------------------------
class DistributedTrainerMixin(AbstractTrainer):
    """Replaces ``AbstractTrainer.__init__``'s DDP wrapping with one that works on CPU too.

    Put it after RecBole's ``Trainer`` in a trainer's bases: ``Trainer.__init__`` calls
    ``super(Trainer, self).__init__``, which then lands here instead of ``AbstractTrainer``.
    """

    def __init__(self, config, model):
        self.config = config
        self.model = model
        if is_distributed(config):
            self.model, self.distributed_model = wrap_model(model, config["device"])


def wrap_model(model, device):
    """``(model, DistributedDataParallel(model))`` for ``device``.

    On CUDA, BatchNorm layers become ``SyncBatchNorm`` as in RecBole; ``SyncBatchNorm`` needs a
    GPU, so on CPU each rank keeps its own batch statistics in training. ``broadcast_buffers``
    is off (see the module docstring); the parameters are sent from rank 0 when wrapping.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # Newer PyTorch renames the switch (the old name still works there, with a warning).
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": False}
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, DistributedDataParallel(model, device_ids=[device.index], **no_sync)
    return model, DistributedDataParallel(model, **no_sync)


@torch.no_grad()
def broadcast_persistent_buffers(model):
    """Gives every rank rank 0's persistent buffers (those a checkpoint holds)."""
    names = {name for name, _ in model.named_buffers()}
    for name, tensor in model.state_dict().items():
        if name in names:
            dist.broadcast(tensor, src=0)


@torch.no_grad()
def broadcast_state(model):
    """Gives every rank rank 0's parameters and persistent buffers (in place)."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def broadcast_tensor(tensor, dtype, device):
    """Rank 0's ``tensor`` on every rank (others pass ``None``); shape travels first."""
    header = torch.zeros(9, dtype=torch.long, device=device)
    if dist.get_rank() == 0:
        header[0] = tensor.dim()
        header[1 : 1 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.long)
    dist.broadcast(header, src=0)
    shape = header[1 : 1 + int(header[0])].tolist()
    if dist.get_rank() == 0:
        buffer = tensor.to(device=device, dtype=dtype).contiguous()
    else:
        buffer = torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buffer, src=0)
    return buffer


# ----- evaluation ------------------------------------------------------------------------------
def unpadded_count(eval_data):
    """How many of this rank's evaluation rows are real (the rest repeat rows of other ranks).

    RecBole's loaders shard with ``DistributedSampler(drop_last=False)``: the index list
    (``shuffle`` or not) is extended with its own first rows to ``num_samples * world_size``
    entries and rank ``r`` takes entries ``r, r + world_size, ...``; the entries past the dataset
    size are the padding. Rank ``r``'s ``j``-th row is entry ``r + j * world_size``, so its real
    rows are its first ``ceil((size - r) / world_size)``.
    """
    sampler = eval_data.sampler
    size, rank, replicas = len(sampler.dataset), sampler.rank, sampler.num_replicas
    if getattr(sampler, "drop_last", False):
        return sampler.num_samples
    return max(0, -(-(size - rank) // replicas))


def gather_tensor(tensor, device):
    """Every rank's ``tensor`` (sizes may differ along dim 0), concatenated in rank order."""
    local = tensor.to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.long, device=device))
    sizes = [int(size.item()) for size in sizes]
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(tensor.device)


def gather_data_struct(struct, device):
    """A RecBole ``DataStruct`` with each of its tensors replaced by all ranks' rows.

    The collector's tensors (``rec.score``, ``data.label``, ...) grow by rows, batch after batch,
    whatever the task; the other entries (counts from the training data) are the same on every
    rank and kept.
    """
    gathered = copy.copy(struct)
    gathered._data_dict = dict(struct._data_dict)
    for key in sorted(struct._data_dict):  # the same order on every rank
        value = struct._data_dict[key]
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            gathered._data_dict[key] = gather_tensor(value, device)
    return gathered


def all_sum(value, device):
    """The sum of a number over all ranks."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item()


def unsharded(loader):
    """A copy of a RecBole data loader that reads the whole dataset in this process.

    For work one rank does alone (CSTWA's pre-training on rank 0): the same class, dataset,
    sampler, batch size and seed as a single-process run, so the result is the same as there.
    """
    config = copy.copy(loader.config)
    config.final_config_dict = dict(config.final_config_dict)
    config["single_spec"] = True
    return type(loader)(config, loader._dataset, loader._sampler, shuffle=loader.shuffle)
