"""Content digests: a file's, streamed, and an array's or tensor's, with its dtype and shape."""

import hashlib

import numpy as np
import torch

from recbole_cstwa import digest


def test_a_file_digest_is_streamed_and_covers_every_byte(tmp_path, monkeypatch):
    path = tmp_path / "a.inter"
    content = bytes(range(256)) * 40
    path.write_bytes(content)
    monkeypatch.setattr(digest, "BLOCK_BYTES", 1000)  # several blocks
    assert digest.file_digest(path) == hashlib.blake2b(content, digest_size=16).hexdigest()
    path.write_bytes(content[:-1] + b"\x00")
    assert digest.file_digest(path) != hashlib.blake2b(content, digest_size=16).hexdigest()


def test_an_array_and_its_tensor_have_one_checksum_which_covers_dtype_and_shape():
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert digest.array_checksum(array) == digest.array_checksum(torch.from_numpy(array))
    assert digest.array_checksum(array) == digest.array_checksum(np.asfortranarray(array))  # C order
    assert digest.array_checksum(array) != digest.array_checksum(array.reshape(4, 3))
    assert digest.array_checksum(array) != digest.array_checksum(array.view(np.float32))
    assert digest.array_checksum(np.zeros((0, 3))) != digest.array_checksum(np.zeros((0, 4)))
