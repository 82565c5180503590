"""The package's shape, read from the source files with ``ast`` (nothing is imported): every import
runs down the package's layers, no import circles, models apart from the trainers and experiments,
the tools apart from the commands, no private name shared across modules, and one home for the
error types."""

import ast
import builtins
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "recbole_cstwa"


def _module_name(path):
    parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _read_modules():
    modules = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as file:
                    modules[_module_name(path)] = (path, ast.parse(file.read(), path))
    return modules


MODULES = _read_modules()


def _imports(module, tree, module_level):
    """``(imported module, [names], line)`` of every import in ``tree`` (``importlib.import_module``
    of a written name included); ``module_level``: only those run when the module is imported
    (not inside a function)."""

    def visit(node):
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, [], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                is_package = MODULES[module][0].endswith("__init__.py")
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names = [alias.name for alias in node.names]
            # ``from package import module`` imports that module.
            submodules = [name for name in names if f"{source}.{name}" in MODULES]
            for name in submodules:
                yield f"{source}.{name}", [], node.lineno
            if len(submodules) < len(names):
                yield source, [name for name in names if name not in submodules], node.lineno
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def _plugin_imports(module_level):
    """``{module: [(imported plugin module, names, line)]}``."""
    return {
        module: [
            (source, names, line)
            for source, names, line in _imports(module, tree, module_level)
            if source == PACKAGE or source.startswith(PACKAGE + ".")
        ]
        for module, (_, tree) in MODULES.items()
    }


def _within(module, package):
    return module == package or module.startswith(package + ".")


def _circles(graph):
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_modules_are_read():
    assert {
        "recbole_cstwa.config",
        "recbole_cstwa.trainer",
        "recbole_cstwa.model.multitask.cstwa.trainer",
    } <= set(MODULES)
    edges = _plugin_imports(module_level=True)
    assert ("recbole_cstwa.trainer", ["MultiTaskTrainer"]) in [
        (source, names) for source, names, _ in edges["recbole_cstwa.model.multitask.cstwa.trainer"]
    ]


@pytest.mark.parametrize("module_level", [True, False], ids=["module level", "function level too"])
def test_no_import_circle(module_level):
    """Not even through an import inside a function (run later, but still a circle of
    dependencies: ``config -> utils -> trainer -> config`` and ``hyper <-> ray_tune`` were)."""
    graph = {
        module: {source for source, _, _ in imports if source in MODULES and source != module}
        for module, imports in _plugin_imports(module_level).items()
    }
    assert _circles(graph) == []


#: The package's rooms (each module file or sub-package directly in ``recbole_cstwa/``; the
#: package's own ``__init__``, its version, is ``__init__``), bottom layer first. A room imports
#: only rooms below it, at module level or inside a function: a new module is placed here.
LAYERS = [
    "__init__",
    # foundations: no plugin import but errors
    "errors",
    "compat",
    "memory",
    "file_writes",
    "digest",
    "random_state",
    "tables",
    "values",
    "optim",
    # what a run is made of
    "tasks",
    "setting_checks",
    "settings",
    "distributed",
    "run_setup",
    "tools",
    "keys",
    "data",
    "evaluator",
    "schema",
    # training
    "checkpoint",
    "trainer",
    "model",
    "registry",
    "config",
    "checkpoint_checks",
    # using what is trained, and the pipeline
    "serving",
    "quick_start",
    "experiments",
    "commands",
]


def _room(module):
    """The room of a plugin module: ``recbole_cstwa.data.cache`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _room_imports():
    """``{(room, imported room): ["module:line imports module", ...]}`` over every import."""
    found = {}
    for module, imports in _plugin_imports(module_level=False).items():
        for source, _, line in imports:
            if source in MODULES and _room(source) != _room(module):
                found.setdefault((_room(module), _room(source)), []).append(
                    f"{module}:{line} imports {source}"
                )
    return found


def test_every_room_has_its_layer():
    assert sorted(LAYERS) == sorted({_room(module) for module in MODULES})
    assert len(set(LAYERS)) == len(LAYERS)


def test_the_rooms_form_no_circle():
    graph = {}
    for room, source in _room_imports():
        graph.setdefault(room, set()).add(source)
    assert _circles(graph) == []


def test_every_import_runs_down_the_layers():
    """Not even inside a function or through ``importlib.import_module``: a room that imports one
    above it (a checkpoint reading the serving code that reads checkpoints) is in the wrong place."""
    layer = {room: position for position, room in enumerate(LAYERS)}
    upward = [
        f"{where} ({room} is below {source})"
        for (room, source), places in sorted(_room_imports().items())
        if layer.get(source, -1) >= layer.get(room, -1)
        for where in places
    ]
    assert upward == []


def test_the_layer_check_sees_imports_inside_functions_and_by_name():
    imports = _room_imports()
    assert ("experiments", "quick_start") in imports  # only inside functions
    by_name = ast.parse("def load():\n    return importlib.import_module('recbole_cstwa.config')\n")
    assert list(_imports("recbole_cstwa.data.cache", by_name, module_level=False)) == [
        ("recbole_cstwa.config", [], 2)
    ]


def test_the_circle_finder_finds_circles():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_models_import_neither_the_trainers_nor_the_experiments():
    bad = []
    for module, imports in _plugin_imports(module_level=False).items():
        if not _within(module, "recbole_cstwa.model"):
            continue
        own_trainer = module.endswith(".trainer")  # a model package's trainer builds on the general one
        for source, _, line in imports:
            if _within(source, "recbole_cstwa.experiments") or (
                _within(source, "recbole_cstwa.trainer") and not own_trainer
            ):
                bad.append(f"{module}:{line} imports {source}")
    assert bad == []


def test_the_general_trainer_imports_no_model():
    """The models sit above the trainers (a model's own trainer builds on the general one): the
    optimizer finds the plugin's embedding tables by what they declare, not by their class."""
    imports = _plugin_imports(module_level=False)
    assert ("recbole_cstwa.optim", ["sparse_row_parameters"]) in [
        (source, [name for name in names if name == "sparse_row_parameters"])
        for source, names, _ in imports["recbole_cstwa.trainer"]
    ]
    for module in ("recbole_cstwa.trainer", "recbole_cstwa.optim", "recbole_cstwa.checkpoint"):
        assert [source for source, _, _ in imports[module] if _within(source, "recbole_cstwa.model")] == []


def test_tools_stand_apart():
    """The tools hold library functions (no command line) and import no command; only the
    commands import the tools."""
    bad = []
    for module, imports in _plugin_imports(module_level=False).items():
        for source, _, line in imports:
            if _within(module, "recbole_cstwa.tools") and _within(source, "recbole_cstwa.commands"):
                bad.append(f"{module}:{line} imports {source}")
            if _within(source, "recbole_cstwa.tools") and not _within(module, "recbole_cstwa.tools"):
                if not _within(module, "recbole_cstwa.commands"):
                    bad.append(f"{module}:{line} imports {source}")
        if _within(module, "recbole_cstwa.tools"):
            bad += [
                f"{module}:{line} imports argparse"
                for source, _, line in _imports(module, MODULES[module][1], module_level=False)
                if source == "argparse"
            ]
    assert bad == []


def test_only_the_commands_import_the_commands():
    """The command-line mains sit on top: the library, the models and the experiments never
    import them (the package's ``__main__`` aside)."""
    bad = [
        f"{module}:{line} imports {source}"
        for module, imports in _plugin_imports(module_level=False).items()
        if not _within(module, "recbole_cstwa.commands") and module != "recbole_cstwa.__main__"
        for source, _, line in imports
        if _within(source, "recbole_cstwa.commands")
    ]
    assert bad == []


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{module}:{line} imports {name} from {source}"
        for module, imports in _plugin_imports(module_level=False).items()
        for source, names, line in imports
        for name in names
        if name.startswith("_") and not name.startswith("__") and source != module
    ]
    assert bad == []


def test_error_types_live_in_errors():
    errors = {node.name for node in MODULES["recbole_cstwa.errors"][1].body if isinstance(node, ast.ClassDef)}
    assert {
        "InputError",
        "ConfigError",
        "DataFormatError",
        "InputFileError",
        "MalformedLineError",
        "DiskFullError",
        "CacheError",
    } <= errors
    builtin_errors = {name for name, value in vars(builtins).items() if isinstance(value, type)}
    builtin_errors = {name for name in builtin_errors if issubclass(getattr(builtins, name), BaseException)}
    bad = []
    for module, (_, tree) in MODULES.items():
        if module != "recbole_cstwa.errors":
            bad += [
                f"{module}:{node.lineno} defines {node.name}"
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")  # a module's own signal, never raised out of it
                and any(
                    isinstance(base, ast.Name) and (base.id in errors or base.id in builtin_errors)
                    for base in node.bases
                )
            ]
    for module, imports in _plugin_imports(module_level=False).items():
        bad += [
            f"{module}:{line} imports {name} from {source}"
            for source, names, line in imports
            for name in names
            if name in errors and source != "recbole_cstwa.errors"
        ]
    assert bad == []


@pytest.mark.parametrize("name", ["InputFileError", "MalformedLineError", "ValueTextError"])
def test_every_error_is_an_input_error(name):
    from recbole_cstwa import errors

    assert issubclass(getattr(errors, name), errors.InputError)


@pytest.mark.slow  # a fresh interpreter imports torch and RecBole
def test_the_model_library_does_not_import_the_tools():
    """At run time too: importing the library and the experiments loads no ``tools`` module."""
    code = (
        "import sys, recbole_cstwa.quick_start, recbole_cstwa.experiments.compare, recbole_cstwa.experiments.hyper\n"
        "assert not [m for m in sys.modules if m.startswith('recbole_cstwa.tools')]\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300
    )
