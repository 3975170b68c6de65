"""The build configuration: nvcc flags and GPU architectures as setup.py resolves them, and the
one-way import order of the package (engine -> certificates -> runs -> command line)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvcc_flags(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env.update(env_extra)
    env["CUDA_VISIBLE_DEVICES"] = ""  # the default list, not the local GPU's
    out = subprocess.run([sys.executable, "setup.py", "--nvcc-flags"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_nvcc_flags_are_torchs_and_the_default_architectures_end_in_ptx():
    flags = _nvcc_flags({})
    for flag in ("-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-std=c++20"):
        assert flag in flags
    codes = re.findall(r"arch=compute_(\d+),code=(sm|compute)_(\d+)", flags)
    assert ("75", "sm", "75") in codes and ("90", "sm", "90") in codes  # T4 and H100 get real code
    assert any(kind == "compute" for _, kind, _ in codes)  # the last entry carries PTX for newer GPUs


def test_torch_cuda_arch_list_is_honoured():
    codes = re.findall(r"arch=compute_(\d+),code=(sm|compute)_(\d+)", _nvcc_flags({"TORCH_CUDA_ARCH_LIST": "8.6"}))
    assert codes == [("86", "sm", "86")]


def _imports(path):
    """costsmooth modules a file imports anywhere (module level or inside functions), as dotted names."""
    import ast
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    package = rel if rel[-1] == "__init__" else rel[:-1]
    package = [p for p in package if p != "__init__"]
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                names.add(".".join(base + node.module.split(".")))
            else:
                names.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("costsmooth"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("costsmooth"))
    return names


def _modules():
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "costsmooth")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = _imports(path)
    return out


COMMANDS = {"costsmooth.cli", "costsmooth.demo", "costsmooth.runs", "costsmooth.train", "costsmooth.distributed",
            "costsmooth.fairness"}
ENGINE_AND_CERTIFICATES = ["costsmooth._checks", "costsmooth.ops", "costsmooth.reference", "costsmooth.sampling",
                           "costsmooth.stats", "costsmooth.cost", "costsmooth.certify", "costsmooth.smooth"]


def test_imports_run_one_way():
    modules = _modules()
    assert "costsmooth.cli" in modules and "costsmooth.sampling" in modules
    # the command line is on top: only ``python -m costsmooth`` imports it
    assert sorted(m for m, deps in modules.items() if "costsmooth.cli" in deps) == ["costsmooth.__main__"]
    # shared argument helpers sit below every command
    assert not modules["costsmooth.args"] & COMMANDS
    # the engine and the certificates never reach up to runs or commands, not even lazily
    for module in ENGINE_AND_CERTIFICATES:
        assert not modules[module] & COMMANDS, (module, modules[module] & COMMANDS)
    assert "costsmooth.demo" not in modules["costsmooth.train"]  # the demo builds on train, not the reverse


def _local_imports_and_private_names(path):
    """(imports inside functions, private names taken from other modules) of one file."""
    import ast
    tree = ast.parse(open(path).read())
    top = set(map(id, tree.body))
    nested, private = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
            nested.append(ast.unparse(node))
        if isinstance(node, ast.ImportFrom):
            private += [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
                        and not (node.level and node.module is None)]  # ``from . import _C`` is a module
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                private.append(ast.unparse(node))
    return nested, private


def test_sequential_certification_runs_one_way():
    # The boundary and tests are certificates (numpy/scipy), the packed scheduler is engine, Smooth joins
    # them, the writer and dataset run sit with the runs: no circle through them, no import inside a
    # function, no private name of another module.
    modules = _modules()
    sequential, packing = modules["costsmooth.sequential"], modules["costsmooth.packing"]
    assert sequential <= {"costsmooth._checks", "costsmooth.stats", "costsmooth.certify", "costsmooth.cost"}
    assert packing <= {"costsmooth._checks", "costsmooth.ops", "costsmooth.sampling"}
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "costsmooth", "sequential.py")).read())
    assert not any(isinstance(n, ast.Import) and any(a.name == "torch" for a in n.names) for n in ast.walk(tree))

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for dep in modules.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    for module in ("costsmooth.sequential", "costsmooth.packing", "costsmooth.smooth", "costsmooth.results"):
        assert module not in reach(module), module  # no circle
    for name in ("sequential", "packing"):
        nested, private = _local_imports_and_private_names(os.path.join(ROOT, "costsmooth", name + ".py"))
        assert not nested and not private, (name, nested, private)
