"""Content digests (BLAKE2b, 16 bytes, as hex): of a file, read in blocks, and of an array or a
tensor with its dtype and shape.

The dataset cache keys its folder with the data files' digests and checks each cached array with
its checksum; CSTWA's artifact cache checks its tensors the same way; a comparison recognises a
finished run by the digests of the setting files it read.
"""

import hashlib

import numpy as np

#: Bytes read a block: a file of any size is hashed in bounded memory.
BLOCK_BYTES = 16 << 20


def file_digest(path):
    """The BLAKE2b digest of a file's bytes, streamed in :data:`BLOCK_BYTES` blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while block := file.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def array_checksum(array):
    """The BLAKE2b digest of a numpy array or a torch tensor: its dtype, shape and bytes (C order).

    The same bytes read as another dtype or shape give another checksum; an empty array has one.
    """
    if hasattr(array, "detach"):  # a torch tensor, read on the CPU
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(f"{array.dtype}/{array.shape}".encode(), digest_size=16)
    digest.update(array.reshape(-1).view(np.uint8))  # also for empty arrays
    return digest.hexdigest()
