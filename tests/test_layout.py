"""The package's shape: what each part may import, module sizes, the public surface, the
one command line and the script shims."""
import ast
import importlib
import importlib.metadata
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zoo"


def _zoo_imports(path: pathlib.Path) -> set[str]:
    """The zoo modules a file imports, at any level (function-level imports included)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = module.rsplit(".", 1)[0] if module.endswith("__init__") else module
        package = module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "zoo"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "zoo":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from zoo import train`
    return found


def _imports_of(package: str) -> dict[str, set[str]]:
    folder = PACKAGE.joinpath(*package.split(".")[1:])
    return {str(p.relative_to(ROOT)): _zoo_imports(p) for p in sorted(folder.rglob("*.py"))}


def _reaches(imports: set[str], forbidden) -> list[str]:
    return sorted(m for m in imports for f in forbidden if m == f or m.startswith(f + "."))


@pytest.mark.parametrize("package,forbidden", [
    ("zoo.kernels", ("zoo.nn", "zoo.models", "zoo.train", "zoo.data", "zoo.weights",
                     "zoo.registry", "zoo.checkpoint", "zoo.bench", "zoo.cli")),
    ("zoo.nn", ("zoo.models", "zoo.train", "zoo.data", "zoo.weights", "zoo.registry",
                "zoo.checkpoint", "zoo.bench", "zoo.cli", "zoo.fully_conv")),
    ("zoo.models", ("zoo.train", "zoo.data", "zoo.weights", "zoo.checkpoint", "zoo.bench",
                    "zoo.cli", "zoo.fully_conv", "zoo.visualize")),
])
def test_imports_point_one_way(package, forbidden):
    offending = {f: _reaches(i, forbidden) for f, i in _imports_of(package).items()}
    assert {f: i for f, i in offending.items() if i} == {}


def test_nothing_imports_the_command_line():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        assert not _reaches(_zoo_imports(path), ("zoo.cli",)), path


def test_modules_stay_readable():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 450} == {}


def test_every_package_declares_its_public_names():
    packages = ["zoo"] + [f"zoo.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]) if m.ispkg]
    assert {"zoo.nn", "zoo.kernels", "zoo.models", "zoo.weights", "zoo.data", "zoo.train",
            "zoo.bench", "zoo.cli", "zoo.fully_conv"} <= set(packages)
    for name in packages:
        module = importlib.import_module(name)
        assert isinstance(module.__all__, list) and module.__all__, name
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.{public}"


def test_public_surface():
    assert zoo.summary("vgg16", (224, 224, 3)).params == 138_357_544
    assert zoo.summary("vgg16", (1, 224, 224, 3)).macs == zoo.summary("vgg16").macs
    assert zoo.pretrained.load is zoo.weights.load
    model, variables = zoo.pretrained.load("lenet5.digits")
    assert model.name == "lenet5" and zoo.count_params(variables["params"]) == 61_706
    for name in ("fully_conv", "train", "data", "checkpoint", "visualize", "bench"):
        assert getattr(zoo, name).__name__ == f"zoo.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        zoo.nope


def test_import_zoo_is_light():
    code = ("import sys, zoo; heavy = [m for m in ('zoo.train', 'zoo.data', 'zoo.weights', "
            "'optax', 'tensorflow', 'torch', 'matplotlib') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_command_line_with_every_command():
    out = subprocess.run([sys.executable, "-m", "zoo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("train", "evaluate", "predict", "visualize", "benchmark", "summary", "list",
                    "export"):
        assert f"    {command}" in out, command
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "zoo"]
    assert entry.value == "zoo.cli:main"
    listing = subprocess.run([sys.executable, "-m", "zoo", "list", "resnet*", "--weights"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == zoo.list_weights("resnet*") and "resnet50.tv2_in1k" in listing


def test_scripts_are_shims_over_the_command_line():
    for path in sorted((ROOT / "scripts").glob("*.py")):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        assert len(lines) <= 3, path.name
        assert "sys.path" not in path.read_text() and "from zoo.cli import script" in lines[0]
