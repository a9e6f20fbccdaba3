"""pyproject.toml's dependencies against what the code imports, without installing anything.

`pip install wakeru[bot]` must give a working bot without torch or transformers (a bot process in a
scale-out deployment never loads a model), and `wakeru[worker]` the model side. Every third-party
import of bot/ and wakeru/ (read with ast, lazy imports inside functions included) must therefore be
declared in the base dependencies or the `bot` extra, and never be a model library; model_worker/'s
in the base dependencies or the `worker` extra. A real `pip install` in the suite would be slow and
need a package index; README's check for that is a fresh venv with `pip install .[bot]`."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable
from functools import cache

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

FIRST_PARTY = {"wakeru", "bot", "model_worker", "tests"}
# Import names whose distribution is called something else (canonical distribution names).
DISTRIBUTION_OF = {
    "yaml": "pyyaml",
    "discord": "discord-py",
    "PIL": "pillow",
    "prometheus_client": "prometheus-client",
    "huggingface_hub": "huggingface-hub",
    "google": "protobuf",
    "babel": "babel",
    "sqlean": "sqlean-py",
    "matplotlib_fontja": "matplotlib-fontja",
}
# Never in a bot-only install.
MODEL_LIBRARIES = {"torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "sentencepiece"}


def distribution(import_name: str) -> str:
    return canonicalize_name(DISTRIBUTION_OF.get(import_name, import_name))


def _runtime_imports(tree: ast.AST) -> Iterable[tuple[str, int, bool]]:
    """(top-level module, line, inside a function) of every absolute import, skipping
    `if TYPE_CHECKING:` bodies."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                stack.extend((child, lazy) for child in node.orelse)
                continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, lazy
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno, lazy
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


@cache
def imports_of(package: str, *, eager_only: bool = False) -> dict[str, list[str]]:
    """Top-level module → where it is imported ("path:line"), for every .py file under the package;
    with eager_only, only the imports that run when the module is imported (not inside functions)."""
    found: dict[str, list[str]] = {}
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module, line, lazy in _runtime_imports(tree):
            if not (eager_only and lazy):
                found.setdefault(module, []).append(f"{path.relative_to(REPO)}:{line}")
    return found


def third_party(package: str) -> dict[str, list[str]]:
    return {
        module: where
        for module, where in imports_of(package).items()
        if module not in FIRST_PARTY and module not in sys.stdlib_module_names and module != "__future__"
    }


@cache
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def declared(*extras: str) -> set[str]:
    """Canonical distribution names of the base dependencies plus the given extras."""
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        assert extra in project["optional-dependencies"], f"pyproject.toml has no [{extra}] extra"
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def undeclared(packages: Iterable[str], allowed: set[str]) -> dict[str, list[str]]:
    missing = {}
    for package in packages:
        for module, where in third_party(package).items():
            if distribution(module) not in allowed:
                missing[f"{module} ({distribution(module)})"] = where[:3]
    return missing


def test_the_scan_sees_the_known_imports():
    """Guards the scanner itself: a silent scan would pass everything."""
    assert {"discord", "aiohttp", "redis", "asyncpg"} <= set(third_party("bot"))
    assert {"yaml", "pydantic"} <= set(third_party("wakeru"))
    assert {"torch", "transformers", "PIL", "numpy"} <= set(third_party("model_worker"))
    assert "os" not in third_party("bot") and "bot" not in third_party("bot")


def test_distribution_names_match_the_installed_packages():
    """The import → distribution table agrees with this environment's metadata, where installed."""
    installed = importlib.metadata.packages_distributions()
    for module, dist in DISTRIBUTION_OF.items():
        if module in installed:
            assert dist in {canonicalize_name(d) for d in installed[module]}, (module, installed[module])


def test_bot_and_wakeru_imports_are_in_the_bot_install():
    allowed = declared("bot")
    missing = undeclared(("bot", "wakeru"), allowed)
    assert not missing, f"imported by bot/ or wakeru/ but not in dependencies or [bot]: {missing}"


def test_wakeru_imports_are_in_the_base_dependencies():
    """wakeru/ is shared by both processes: a worker-only install must import it too."""
    missing = undeclared(("wakeru",), declared())
    assert not missing, f"imported by wakeru/ but not in the base dependencies: {missing}"


def test_model_worker_imports_are_in_the_worker_install():
    # [onnx] is the one optional extra of the worker: onnxruntime, imported only for an ONNX export's model.id
    missing = undeclared(("model_worker",), declared("worker", "onnx"))
    assert not missing, f"imported by model_worker/ but not in dependencies, [worker] or [onnx]: {missing}"


def test_onnx_runtime_is_imported_only_by_the_onnx_adapter():
    """Without the [onnx] extra the worker still starts: onnxruntime is imported inside functions of the ONNX
    adapter's loading path, never at module level."""
    where = third_party("model_worker").get("onnxruntime", [])
    assert where and all(
        w.split(":")[0] in {"model_worker/model/adapters/onnx_clip.py", "model_worker/model/adapters/__init__.py"}
        for w in where
    ), where
    for path in ("model_worker/model/adapters/onnx_clip.py", "model_worker/model/adapters/__init__.py"):
        top_level = [line for line in (REPO / path).read_text().splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in top_level if "onnxruntime" in line], path


def test_the_bot_install_has_no_model_libraries():
    heavy = declared("bot") & MODEL_LIBRARIES
    assert not heavy, f"pip install wakeru[bot] would pull in {heavy}"
    assert declared("worker") >= MODEL_LIBRARIES


def test_bot_and_wakeru_never_import_the_model_side():
    """No model library anywhere in bot/ or wakeru/, not even lazily. model_worker/ only lazily in
    bot/ (the local transport's spawn target, which needs the worker extra anyway); never in
    wakeru/, which both processes share."""
    for package in ("bot", "wakeru"):
        imports = imports_of(package)
        heavy = {m: imports[m] for m in imports if distribution(m) in MODEL_LIBRARIES}
        assert not heavy, f"{package}/ imports model libraries: {heavy}"
    assert "model_worker" not in imports_of("bot", eager_only=True), (
        f"importing bot/ must not import model_worker: {imports_of('bot', eager_only=True)['model_worker']}"
    )
    assert "model_worker" not in imports_of("wakeru"), imports_of("wakeru")["model_worker"]


def test_torch_range_accepts_the_pinned_builds():
    """Makefile's TORCH_SPEC (2.13.0, the local wheel) and the Docker base's torch (2.5.1)."""
    torch = next(
        Requirement(r)
        for r in pyproject()["project"]["optional-dependencies"]["worker"]
        if canonicalize_name(Requirement(r).name) == "torch"
    )
    for version in ("2.13.0", "2.5.1"):
        assert torch.specifier.contains(version), (str(torch), version)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M)
    assert spec and torch.specifier.contains(spec.group(1)), (spec, str(torch))


def test_make_installs_the_bot_the_worker_and_the_test_tools():
    """`make run` starts the bot with its local worker; `make test` runs every suite."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    installs = re.findall(r'pip install[^\n]*?-e "?\.\[([^\]]*)\]', makefile)
    assert installs, "the Makefile installs the project with pip install -e .[…]"
    extras = {e.strip() for group in installs for e in group.split(",")}
    assert {"bot", "worker", "dev"} <= extras, extras
    assert set(pyproject()["project"]["optional-dependencies"]) >= extras
