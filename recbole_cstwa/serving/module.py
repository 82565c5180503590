"""A trained model as a plain tensor function: field indices in, probabilities out.

:class:`ServingModule` wraps a model rebuilt from its checkpoint
(:func:`recbole_cstwa.serving.trained.load_trained`). It takes, for a batch of impressions,

- ``tokens``: ``(B, T)`` int64, the index of each token field of the impression (the user id,
  the item id, the context fields; :func:`input_fields` gives the order), 0 for a missing token
  (RecBole's ``[PAD]``: the field counts as absent) and the field's
  :attr:`ServingModule.unseen_index` for a token the training data never had: for a model with
  out-of-vocabulary rows (``min_count`` > 0) the field's vocabulary size, one past its last
  index, scored with the field's trained out-of-vocabulary row (an unseen user or item has no
  features: they count as absent); otherwise 0, as a missing token;
- ``floats``: ``(B, F)`` float32, the value of each numerical field (``numerical_features``);

looks up the user's and item's feature fields in the tables the training data held (as RecBole's
``Dataset.join``) and returns ``(B, K)`` float32 probabilities, one column a name of
:attr:`ServingModule.output_names`: ``p_click``, ``p_purchase`` (impression level) and
``p_cvr`` (post-click) for the plugin's models; the trained label's probability for a RecBole
model. The predictor runs it eagerly (with ``entity_vectors``: each user's and item's vectors held
in one row, :class:`~recbole_cstwa.model.layers.JointLookup`; the same numbers) and the exporter
traces it with the compact tables, so both score alike.

``p_cvr`` of a model without a pCVR head (all but ESMM, ESCM2, DCMT, DDPO and NISE) is the ESMM paper's DIVISION
baseline, ``p_purchase / p_click`` clipped into (0, 1): the post-click probability implied by the
model's two impression-level heads, computed as the evaluator scores it
(:func:`recbole_cstwa.evaluator.division_cvr`).
"""

import copy

import torch
import torch.nn as nn
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_cstwa.errors import InputError
from recbole_cstwa.evaluator import division_cvr
from recbole_cstwa.model.layers import FieldEmbedding, JointLookup
from recbole_cstwa.tasks import trained_label

#: Output columns: model output -> column name.
OUTPUT_COLUMNS = {"click": "p_click", "purchase": "p_purchase", "cvr": "p_cvr"}
#: The sources of the fields an impression row carries (the ``.inter`` file's).
ROW_SOURCES = (FeatureSource.INTERACTION, FeatureSource.USER_ID, FeatureSource.ITEM_ID)


def input_fields(dataset, config):
    """``(token_fields, float_fields)`` an impression row gives the model, in input order.

    Labels are left out; float fields outside ``numerical_features`` are read by no model.
    """
    labels = {config["CLICK_FIELD"], config["PURCHASE_FIELD"], config["LABEL_FIELD"]}
    numerical = set(config["numerical_features"] or [])
    tokens, floats = [], []
    for field in dataset.fields(source=list(ROW_SOURCES)):
        if field in labels:
            continue
        ftype = dataset.field2type[field]
        if ftype == FeatureType.TOKEN:
            tokens.append(field)
        elif ftype == FeatureType.FLOAT and field in numerical:
            floats.append(field)
        elif ftype in (FeatureType.TOKEN_SEQ, FeatureType.FLOAT_SEQ):
            raise InputError(
                f"Field [{field}] is a {ftype.value} field: scoring new rows supports token and "
                "float fields of the impressions (sequence fields may sit in the .user / .item "
                "files)."
            )
    return tokens, floats


def _tensors(model, parameters_only=False):
    """The CPU tensors ``model`` holds: parameters, and unless ``parameters_only`` its buffers and
    the tensors its modules keep as attributes."""
    tensors = list(model.parameters())
    if not parameters_only:
        tensors += list(model.buffers())
        for module in model.modules():
            tensors += [value for value in vars(module).values() if isinstance(value, torch.Tensor)]
    return [tensor for tensor in tensors if tensor.device.type == "cpu"]


class ServingModule(nn.Module):
    """``forward(tokens, floats) -> (B, K) probabilities`` of a trained model (module doc).

    ``entity_vectors``: hold each user's and item's vectors of every embedding layer in one row
    (:class:`~recbole_cstwa.model.layers.JointLookup`): the same numbers, 15-20% more rows a
    second, the user and item vectors held twice. The predictor's choice; the exports keep the
    compact tables.
    """

    def __init__(self, trained, entity_vectors=False):
        super().__init__()
        config, dataset = trained.config, trained.dataset
        if config["discretization"]:
            raise InputError(
                "The model was trained with discretization: its bucket boundaries are not stored, "
                "so new rows cannot be bucketed the same way. Fix: train without discretization."
            )
        self.token_fields, self.float_fields = input_fields(dataset, config)
        # A copy of the modules that shares the model's CPU tensors (embedding tables, CSTWA's
        # held P and graphs: most of its memory): serving changes settings of its copy below,
        # never a tensor, except where it computes P itself (sm_mode: batch, below).
        computes_p = getattr(trained.model, "use_sm", False) and trained.model.sm_mode == "batch"
        shared = {id(tensor): tensor for tensor in _tensors(trained.model, parameters_only=computes_p)}
        model = copy.deepcopy(trained.model, memo=shared).cpu().eval()
        for layer in model.modules():
            if isinstance(layer, FieldEmbedding):
                layer.sparse = False  # a dense look-up: the same rows, no custom autograd op
        if getattr(model, "use_sm", False) and model.sm_mode == "batch":
            # P = A_hat^L E of the final embedding, which the per-batch propagation computes
            # row by row: computed once, the module holds no graph.
            model.update_structure()
            model.sm_mode = "epoch"
        layers = [layer for layer in model.modules() if isinstance(layer, FieldEmbedding)]
        with_oov = any(layer.token_rows is not None for layer in layers)
        if with_oov and getattr(model, "use_sm", False):
            model.hold_unseen_entities()
        self.model = model
        self.multitask = trained.is_multitask
        self.outputs = ["click", "purchase", "cvr"] if self.multitask else [trained_label(config)]
        self.output_names = [OUTPUT_COLUMNS[name] for name in self.outputs]
        #: field -> the index a token unseen in training gets (module doc).
        self.unseen_index = {field: dataset.num(field) if with_oov else 0 for field in self.token_fields}
        self.joint_lookups = nn.ModuleList(_joint_lookups(layers, entity_vectors))
        self.joins = []  # (id field, [(feature field, buffer name)])
        for group, feat, id_field in (
            ("user", dataset.get_user_feature(), dataset.uid_field),
            ("item", dataset.get_item_feature(), dataset.iid_field),
        ):
            if feat is None or id_field not in self.token_fields:
                continue
            # A plugin model's embedding layers look the token features up by id themselves
            # (FieldEmbedding's index tables): only the other features are joined here.
            by_id = self.multitask and layers and all(group in layer._entity_field for layer in layers)
            columns = []
            for position, field in enumerate(f for f in feat.columns if f != id_field):
                if by_id and dataset.field2type[field] == FeatureType.TOKEN:
                    continue
                name = f"{group}_table_{position}"
                table = feat[field].clone()
                if with_oov:  # the unseen id (one past the last) has no features
                    table = torch.cat([table, torch.zeros_like(table[:1])])
                self.register_buffer(name, table)
                columns.append((field, name))
            self.joins.append((id_field, columns))
        with torch.no_grad():  # one all-padding row: which outputs the model gives itself
            probe = self.task_outputs(
                torch.zeros(1, len(self.token_fields), dtype=torch.long),
                torch.zeros(1, len(self.float_fields)),
            )
        #: The model's own outputs (``cvr`` only with a pCVR head): what metrics are computed on.
        self.native_outputs = [name for name in self.outputs if name in probe]

    def interaction(self, tokens, floats):
        """The batch as the ``Interaction`` the model reads (user / item features joined)."""
        columns = {field: tokens[:, i] for i, field in enumerate(self.token_fields)}
        for j, field in enumerate(self.float_fields):
            value = floats[:, j]
            columns[field] = torch.stack([value, torch.ones_like(value)], dim=1)  # RecBole's [value, 1]
        for id_field, tables in self.joins:
            ids = columns[id_field]
            for field, name in tables:
                columns[field] = getattr(self, name).index_select(0, ids)
        return Interaction(columns)

    def task_outputs(self, tokens, floats):
        """``{"click"/"purchase"/"cvr": (B,)}``: the model's own outputs (no DIVISION p_cvr)."""
        interaction = self.interaction(tokens, floats)
        if self.multitask:
            return self.model.predict_tasks(interaction)
        return {self.outputs[0]: self.model.predict(interaction)}

    def forward(self, tokens, floats):
        outputs = self.task_outputs(tokens, floats)
        if self.multitask and "cvr" not in outputs:
            outputs["cvr"] = division_cvr(outputs["purchase"], outputs["click"])
        return torch.stack([outputs[name].float() for name in self.outputs], dim=1)


def _joint_lookups(layers, entity_vectors):
    """:class:`JointLookup` s for the embedding layers that map ids to rows alike (a model's
    click and purchase embeddings): one gather a batch for them all; with ``entity_vectors``
    every layer, alone or not, reads one row a user and an item."""
    joint, left = [], list(layers)
    while left:
        first = left.pop(0)
        alike = [layer for layer in left if JointLookup.joinable(first, layer)]
        if alike or entity_vectors:  # a layer alone gains from the entity rows, not the join
            joint.append(JointLookup([first, *alike], entity_vectors))
            left = [layer for layer in left if layer not in alike]
    return joint
