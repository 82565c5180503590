"""The model and trainer registry: a model name resolves to a plugin model first, then to a RecBole
built-in model; a model's trainer is found next to the model, else it is a general one.

The same pattern as RecBole-GNN's ``utils.py``: plugin models live one a module in
``recbole_cstwa/model/<category>/<name.lower()>.py`` (or one a package,
``recbole_cstwa/model/<category>/<name.lower()>/``, exporting the model), and a class with the
model's name. A model that needs its own trainer keeps it in its package's ``trainer`` module as
``<ModelName>Trainer`` (CSTWA's: ``recbole_cstwa/model/multitask/cstwa/trainer.py``).
"""

import importlib
import os
import pkgutil

from recbole.utils import ModelType
from recbole.utils import get_model as get_recbole_model

from recbole_cstwa.errors import UnknownModelError
from recbole_cstwa.model.abstract_recommender import MultiTaskRecommender
from recbole_cstwa.trainer import MultiTaskTrainer, SingleTaskTrainer

#: Sub-packages of ``recbole_cstwa.model`` holding one model a file.
PLUGIN_MODEL_CATEGORIES = ("multitask",)
#: RecBole's model sub-packages searched for built-in models. ``exlib_recommender`` is left out:
#: importing it needs lightgbm and xgboost, which RecBole does not install.
RECBOLE_MODEL_CATEGORIES = (
    "context_aware_recommender",
    "general_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


def _module_names(package_name):
    package = importlib.import_module(package_name)
    return [info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]


def plugin_model_names():
    """Names of the models this plugin registers, e.g. ``['CSTWA', 'ESMM', ...]``."""
    names = []
    for category in PLUGIN_MODEL_CATEGORIES:
        package_name = f"recbole_cstwa.model.{category}"
        for module_name in _module_names(package_name):
            module = importlib.import_module(f"{package_name}.{module_name}")
            names += [
                name
                for name, value in vars(module).items()
                if isinstance(value, type) and name.lower() == module_name
            ]
    return sorted(names)


def recbole_model_modules():
    """Lower-case module names of RecBole's built-in models (one model a module)."""
    import recbole.model

    root = os.path.dirname(recbole.model.__file__)
    modules = []
    for category in RECBOLE_MODEL_CATEGORIES:
        modules += [
            info.name
            for info in pkgutil.iter_modules([os.path.join(root, category)])
            if not info.name.startswith("_")
        ]
    return sorted(modules)


def get_model(model_name):
    """Returns the model class named ``model_name``: a plugin model, else a RecBole model.

    Raises:
        UnknownModelError: with the list of plugin models and RecBole's built-in models.
    """
    if not isinstance(model_name, str) or not model_name:
        raise UnknownModelError(f"A model name must be a non-empty string, got {model_name!r}.")
    if not model_name.isidentifier():  # a module path would be looked up from it (../mlp)
        raise UnknownModelError(
            f"Model [{model_name}] is no model name (a name such as CSTWA, MLP or DeepFM). "
            f"recbole-cstwa models: {', '.join(plugin_model_names())}."
        )
    module_name = model_name.lower()
    for category in PLUGIN_MODEL_CATEGORIES:
        module_path = f"recbole_cstwa.model.{category}.{module_name}"
        if importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            for name, value in vars(module).items():
                if isinstance(value, type) and name.lower() == module_name:
                    return value
    if module_name in recbole_model_modules():
        model_class = get_recbole_model(_recbole_class_name(model_name))
        return model_class
    raise UnknownModelError(
        f"Model [{model_name}] is neither a recbole-cstwa model nor a RecBole built-in model. "
        f"recbole-cstwa models: {', '.join(plugin_model_names())}. RecBole's context-aware "
        f"models: {', '.join(_recbole_context_class_names())}."
    )


def _recbole_class_name(model_name):
    """The exact class name for a RecBole model given in any letter case (``deepfm`` -> ``DeepFM``)."""
    for category in RECBOLE_MODEL_CATEGORIES:
        module_path = f"recbole.model.{category}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            for name, value in vars(module).items():
                if isinstance(value, type) and name.lower() == model_name.lower():
                    return name
    return model_name


def _recbole_context_class_names():
    import recbole.model.context_aware_recommender as context_models

    return sorted(
        name
        for name, value in vars(context_models).items()
        if isinstance(value, type) and getattr(value, "type", None) == ModelType.CONTEXT
    )


def is_multitask_model(model_class):
    """True for this plugin's two-task (click, purchase) models."""
    return isinstance(model_class, type) and issubclass(model_class, MultiTaskRecommender)


def model_trainer(model_class):
    """The trainer a plugin model brings (``<ModelName>Trainer`` in the ``trainer`` module of the
    model's package), or None."""
    package, _, _ = model_class.__module__.rpartition(".")
    if not package.startswith("recbole_cstwa."):
        return None
    module_path = f"{package}.trainer"
    if importlib.util.find_spec(module_path) is None:
        return None
    return getattr(importlib.import_module(module_path), model_class.__name__ + "Trainer", None)


def get_trainer(model_type, model_name):
    """Returns the trainer class for a model, RecBole-GNN style.

    A plugin model's own trainer (:func:`model_trainer`) wins; otherwise this plugin's
    multi-task trainer for its two-task models, and its single-task trainer for RecBole's
    context-aware models (trained on ``LABEL_FIELD``, scored as the click or the purchase task).
    """
    model_class = get_model(model_name)
    own_trainer = model_trainer(model_class)
    if own_trainer is not None:
        return own_trainer
    if is_multitask_model(model_class):
        return MultiTaskTrainer
    if model_type != ModelType.CONTEXT:
        raise UnknownModelError(
            f"Model [{model_name}] is a RecBole {model_type.name.lower()} model; recbole-cstwa "
            "scores impressions with a click and a purchase label, so it runs RecBole's "
            "context-aware models (DeepFM, WideDeep, DCN, ...) and its own multi-task models."
        )
    return SingleTaskTrainer
