"""CSTWA in one package: the model (:mod:`.cstwa`), its graph maths (:mod:`.structure`), the
Structure Migrator's per-group state (:mod:`.entity_graph`), its trainer (:mod:`.trainer`: the
pre-training and graph stages and the Structure Migrator's schedule) and the cache of those
stages' artifacts (:mod:`.artifact_cache`)."""

from recbole_cstwa.model.multitask.cstwa.cstwa import CSTWA

__all__ = ["CSTWA"]
