"""The on-disk cache of CSTWA's pre-training artifacts (the pre-trained CTR embedding and the
user / item graphs), keyed by the content of the data and the settings they depend on.

Files hold tensors and plain values only (``torch.save``, read back with ``weights_only=True``),
and a BLAKE2b checksum of every tensor, checked when the file is read: a file changed after it was
written is recomputed, not used.
"""

import hashlib
import json
import os

import numpy as np
import torch

from recbole_cstwa.digest import array_checksum
from recbole_cstwa.file_writes import atomic_file, remove_stale_temporaries

#: The artifact entry holding the tensors' checksums.
CHECKSUMS = "blake2b"


def dataset_fingerprint(dataset):
    """A content hash of what a dataset loaded: its interactions and user / item features.

    Hashes every field's tensor (name, dtype, shape, bytes), so the same data gives the same
    fingerprint wherever its files lie, and any change in the rows, the token remapping or the
    split changes it.
    """
    digest = hashlib.blake2b(digest_size=16)
    parts = [("inter", dataset.inter_feat)]
    for name, getter in (("user", "get_user_feature"), ("item", "get_item_feature")):
        try:
            parts.append((name, getattr(dataset, getter)()))
        except (AttributeError, ValueError):  # no user / item id field
            continue
    for name, features in parts:
        if features is None:
            continue
        for field in sorted(features.columns):
            array = np.ascontiguousarray(features[field].cpu().numpy())
            digest.update(f"{name}/{field}/{array.dtype}/{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def settings_hash(settings):
    """A short stable hash of a JSON-able settings dict."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tensor_checksums(tree, prefix=""):
    """``{"a/b": checksum}`` for every tensor in a nested dict / list
    (:func:`recbole_cstwa.digest.array_checksum`: dtype, shape, bytes)."""
    sums = {}
    items = (
        tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    )
    for name, value in items:
        path = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            sums[path] = array_checksum(value)
        elif isinstance(value, (dict, list, tuple)):
            sums.update(tensor_checksums(value, f"{path}/"))
    return sums


class ArtifactCache:
    """Tensors cached on disk under ``directory``, one file per settings key.

    ``<prefix>-<kind>-<hash>.pth`` holds a dict of tensors and plain values (``torch.save``,
    read back with ``weights_only=True``); ``<...>.json`` beside it holds the settings, so that a
    miss can say which settings differ from the newest cached artifact of the same kind.
    """

    def __init__(self, directory, prefix):
        self.directory = directory
        self.prefix = prefix

    def path(self, kind, settings):
        return os.path.join(self.directory, f"{self.prefix}-{kind}-{settings_hash(settings)}.pth")

    def load(self, kind, settings):
        """``(artifact or None, path, reason)``: reason says why nothing was loaded."""
        path = self.path(kind, settings)
        remove_stale_temporaries(self.directory)
        if os.path.islink(path):
            return None, path, f"cached file [{path}] is a symbolic link"
        if not os.path.isfile(path):
            return None, path, self._miss_reason(kind, settings)
        try:
            artifact = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: recompute it
            return None, path, f"cached file [{path}] could not be read ({type(error).__name__})"
        if not isinstance(artifact, dict):
            return (
                None,
                path,
                f"cached file [{path}] holds a {type(artifact).__name__}, not a cached artifact",
            )
        if artifact.get("settings") != json.loads(json.dumps(settings, default=str)):
            return None, path, f"cached file [{path}] holds other settings"
        stored = artifact.pop(CHECKSUMS, None)
        tensors = {name: value for name, value in artifact.items() if name != "settings"}
        if stored != tensor_checksums(tensors):
            return (
                None,
                path,
                f"cached file [{path}] does not match its checksums (changed after it was written)",
            )
        return artifact, path, None

    def save(self, kind, settings, tensors):
        os.makedirs(self.directory, exist_ok=True)
        path = self.path(kind, settings)
        plain = json.loads(json.dumps(settings, default=str))
        # Exclusive temporary files renamed into place: a reader never sees half a file, and
        # nothing planted at a temporary name is followed.
        with atomic_file(path, "wb") as file:
            torch.save({"settings": plain, **tensors, CHECKSUMS: tensor_checksums(tensors)}, file)
        with atomic_file(path[: -len(".pth")] + ".json", "w", encoding="utf-8") as file:
            json.dump(plain, file, sort_keys=True, indent=1)
        return path

    def _miss_reason(self, kind, settings):
        head = f"{self.prefix}-{kind}-"
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(head) and n.endswith(".json")]
        except FileNotFoundError:
            names = []
        if not names:
            return f"no cached {kind} in [{self.directory}]"
        newest = max(names, key=lambda n: os.path.getmtime(os.path.join(self.directory, n)))
        try:
            with open(os.path.join(self.directory, newest), encoding="utf-8") as file:
                previous = json.load(file)
        except (OSError, ValueError, RecursionError):
            return f"no readable cached {kind} in [{self.directory}]"
        if not isinstance(previous, dict):
            return f"no readable cached {kind} in [{self.directory}] ({newest} holds no settings)"
        current = json.loads(json.dumps(settings, default=str))
        changed = [
            f"{key}: {previous.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(previous) | set(current))
            if previous.get(key) != current.get(key)
        ]
        return f"settings changed since the newest cached {kind} ({'; '.join(changed) or 'none'})"
