"""RecBole's point-wise dataloaders without a Python int per impression.

RecBole's ``AbstractDataLoader`` hands torch ``list(range(sample_size))`` as its dataset, and
torch's ``RandomSampler`` shuffles with ``torch.randperm(n).tolist()``: two lists of Python ints,
about 36 bytes an impression each (3 GB apiece for Ali-CCP's 85M). These subclasses give torch
a ``range`` and batches of indices sliced from one ``randperm`` tensor (8 bytes an impression),
drawn from the same generator in the same order, so batches and training are unchanged. Under
DDP (``single_spec`` false) RecBole's own distributed sampler is kept.
"""

import numpy as np
import torch
from recbole.data.dataloader import NegSampleEvalDataLoader, TrainDataLoader


class _Rows:
    """Row indices ``0 .. size - 1`` as torch's dataset; a batch of indices comes back whole."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index

    def __getitems__(self, indices):
        return indices


class _IndexBatches(torch.utils.data.Sampler):
    """Index batches of ``loader.step`` rows, shuffled like torch's ``RandomSampler``."""

    def __init__(self, loader, shuffle):
        self.loader = loader
        self.shuffle = shuffle

    def __len__(self):
        return -(-self.loader.sample_size // self.loader.step)

    def __iter__(self):
        size, step = self.loader.sample_size, self.loader.step
        order = torch.randperm(size, generator=self.loader.generator).numpy() if self.shuffle else None
        for start in range(0, size, step):
            stop = min(start + step, size)
            yield order[start:stop] if order is not None else np.arange(start, stop)
        if self.shuffle:
            # RandomSampler draws one more permutation for the remainder (of length 0): drawn
            # here too, so that the next epoch's order is RecBole's.
            torch.randperm(size, generator=self.loader.generator)


class _CompactIndexLoader(torch.utils.data.DataLoader):
    """Placed between RecBole's ``AbstractDataLoader`` and torch's ``DataLoader`` in the MRO."""

    _compact = False

    @property
    def sample_size(self):
        # Read as 0 only while RecBole builds its list(range(sample_size)).
        return 0 if self._compact_pending else self._sample_size

    @sample_size.setter
    def sample_size(self, value):
        self._sample_size = value

    _compact_pending = False

    def __init__(self, dataset, batch_size, collate_fn, num_workers, shuffle, sampler, generator):
        if not self._compact_pending:
            super().__init__(
                dataset=dataset,
                batch_size=batch_size,
                collate_fn=collate_fn,
                num_workers=num_workers,
                shuffle=shuffle,
                sampler=sampler,
                generator=generator,
            )
            return
        self._compact_pending = False
        super().__init__(
            dataset=_Rows(self.sample_size),
            batch_sampler=_IndexBatches(self, shuffle),
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=generator,
        )


def _start(loader, config):
    loader._compact_pending = bool(config["single_spec"])


class CompactTrainDataLoader(TrainDataLoader, _CompactIndexLoader):
    def __init__(self, config, dataset, sampler, shuffle=False):
        _start(self, config)
        super().__init__(config, dataset, sampler, shuffle=shuffle)


class CompactEvalDataLoader(NegSampleEvalDataLoader, _CompactIndexLoader):
    def __init__(self, config, dataset, sampler, shuffle=False):
        _start(self, config)
        super().__init__(config, dataset, sampler, shuffle=shuffle)
