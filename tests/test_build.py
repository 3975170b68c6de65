"""The build configuration: the nvcc commands of a CUDA build as BuildExtension composes them, the GPU
architectures setup.py resolves, the torch floor against the APIs used, and the one-way import order
of the package (engine -> certificates -> runs -> command line)."""
import ast
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


NEEDS_NVCC = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("ninja") is None,
                                reason="nvcc or ninja not found: no CUDA build command to capture")


def _nvcc_commands(env_extra, tmp_path):
    """The .cu compile commands BuildExtension composes, captured by ``setup.py --nvcc-commands``."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env.update(env_extra)
    env["CUDA_VISIBLE_DEVICES"] = ""  # the default list, not the local GPU's
    out = subprocess.run([sys.executable, "setup.py", "--nvcc-commands", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if not line.startswith("costsmooth build:")]
    assert commands, out.stdout
    return commands


@NEEDS_NVCC
def test_the_captured_nvcc_commands_are_buildextensions_own_for_every_kernel(tmp_path):
    commands = _nvcc_commands({}, tmp_path)
    kernels = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    sources = sorted(next(a for a in shlex.split(c) if a.endswith(".cu")) for c in commands)
    assert sources == kernels  # one command per .cu file, none left out
    for command in commands:
        args = shlex.split(command)
        assert os.path.basename(args[0]) == "nvcc"
        for flag in cpp_extension.COMMON_NVCC_FLAGS + ["-std=c++20", "-O3", "-DTORCH_EXTENSION_NAME=_C"]:
            assert flag in args, flag  # torch's flags (half conversions off), the standard, this project's
        codes = re.findall(r"arch=compute_(\d+),code=(sm|compute)_(\d+)", command)
        assert ("75", "sm", "75") in codes and ("90", "sm", "90") in codes  # T4 and H100 get real code
        assert any(kind == "compute" for _, kind, _ in codes)  # the last entry carries PTX for newer GPUs


@NEEDS_NVCC
def test_torch_cuda_arch_list_is_honoured(tmp_path):
    command = _nvcc_commands({"TORCH_CUDA_ARCH_LIST": "8.6"}, tmp_path)[0]
    assert re.findall(r"arch=compute_(\d+),code=(sm|compute)_(\d+)", command) == [("86", "sm", "86")]


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


# The first torch release with each API the package uses whose age matters (every other API it uses
# is older than 2.0). pyproject.toml's floor must be the newest of them: a user with an older torch
# gets pip's version error, not an AttributeError deep inside a run.
TORCH_API_SINCE = {
    "torch.compile": (2, 0),
    "torch.library.register_fake": (2, 4),  # ops.py: fake kernels of the compiled ops
    "torch.library.opcheck": (2, 4),  # tests of the ops' registrations
    "torch.OutOfMemoryError": (2, 5),  # sampling.py: out-of-memory recovery (torch.cuda's alias before)
    "torch.nn.utils.get_total_norm": (2, 6),  # train.py: skipping steps with non-finite gradients
    "torch.serialization.get_unsafe_globals_in_checkpoint": (2, 6),  # models.py: what a file would import
}
# Namespaces whose APIs are recent enough that each one used must be listed above.
RECENT_NAMESPACES = ("torch.library.", "torch.compiler.", "torch.export.", "torch.serialization.",
                     "torch.nn.attention.", "torch.amp.", "torch.accelerator.")


def _sources(folders=("costsmooth", "tests", "benchmarks")):
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)):
            yield path, open(path).read()


def _declared_torch_floors():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    return [tuple(int(v) for v in m) for m in re.findall(r'"torch>=(\d+)\.(\d+)"', text)]


def test_the_declared_torch_floor_is_the_newest_api_the_code_uses():
    floors = _declared_torch_floors()
    assert len(floors) == 2  # the build requirement and the runtime dependency
    assert set(floors) == {max(TORCH_API_SINCE.values())}, (floors, TORCH_API_SINCE)
    code = "\n".join(text for _, text in _sources())
    for api in TORCH_API_SINCE:
        assert api in code, f"{api} is no longer used: drop it from TORCH_API_SINCE (and maybe lower the floor)"
        obj = torch
        for part in api.split(".")[1:]:
            obj = getattr(obj, part)  # it exists in the installed torch
    recent = {m for m in re.findall(r"\btorch(?:\.[A-Za-z_]\w*)+", code) if m.startswith(RECENT_NAMESPACES)}
    unlisted = sorted(m for m in recent if m not in TORCH_API_SINCE)
    assert not unlisted, f"add these APIs with their first torch version to TORCH_API_SINCE: {unlisted}"


def test_every_torch_load_states_weights_only():
    """torch.load's weights_only default changed in torch 2.6 (False -> True): every call in the package
    states it, so that loading behaves the same on every torch from the floor on."""
    calls = []
    for path, text in _sources(("costsmooth",)):
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                calls.append((os.path.relpath(path, ROOT), node.lineno,
                              any(k.arg == "weights_only" for k in node.keywords)))
    assert calls
    assert [c for c in calls if not c[2]] == []
