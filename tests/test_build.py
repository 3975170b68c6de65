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


def test_every_cuda_launch_is_checked_as_its_own():
    """Each launcher returns the error read right after its own launches; each CUDA op first reports an
    error left pending by earlier work as such, then checks its launcher's error with torch's C10_CUDA_CHECK."""
    header = open(os.path.join(ROOT, "csrc", "kernels.h")).read()
    cpp = open(os.path.join(ROOT, "csrc", "cuda", "sampling_cuda.cpp")).read()
    kernels = open(os.path.join(ROOT, "csrc", "cuda", "sampling_kernels.cu")).read()
    launchers = re.findall(r"^(\w+) (launch_\w+)\(", header, re.M)
    assert len(launchers) >= 6 and all(kind == "int" for kind, _ in launchers), launchers
    # each op: the pending-error check of the op first, then its one launch inside torch's check
    one_op = r'check_no_pending_error\("(\w+)"\);(?:(?!check_no_pending_error).)*?check_launch\((launch_\w+)\('
    calls = re.findall(one_op, cpp, re.S)
    assert sorted(name for _, name in calls) == sorted(name for _, name in launchers)
    assert all(name == f"launch_{op}" for op, name in calls)  # the op named in a message is the op launched
    assert len(re.findall(r"\blaunch_\w+\(p,", cpp)) == len(launchers)  # no launch without the checks
    assert "C10_CUDA_CHECK(" in cpp and "cudaDeviceGetAttribute" not in cpp
    assert kernels.count("cudaDeviceGetAttribute(") == 1  # in the per-device cache only


COMMANDS = {"costsmooth.cli", "costsmooth.demo", "costsmooth.runs", "costsmooth.analysis", "costsmooth.train",
            "costsmooth.distributed", "costsmooth.fairness", "costsmooth.fairness_synthetic"}
ENGINE_AND_CERTIFICATES = ["costsmooth._checks", "costsmooth.ops", "costsmooth.reference", "costsmooth.sampling",
                           "costsmooth.stats", "costsmooth.cost", "costsmooth.certify",
                           "costsmooth.input_dependent_certify", "costsmooth.smooth"]




# Optional heavy dependencies: the only imports allowed inside a function, each with a comment on its line or the
# line above saying why it is deferred. Everything else is imported at the top of its module.
LAZY_IMPORTS_ALLOWED = ("matplotlib", "scipy.optimize", "scipy.sparse", "torch.distributed", "torchvision", "mpmath",
                        "sklearn", "PIL")
# Known breaches kept for now, by (file or folder without .py, rule), each with its reason; a circle is looked for
# without the imports of the files allowed one. The goal is an empty list.
ALLOWED_VIOLATIONS = {
}


def _allowed(file, rule):
    stem = file[:-3] if file.endswith(".py") else file
    return any(r == rule and (stem == key or stem.startswith(key + "/")) for key, r in ALLOWED_VIOLATIONS)


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_modules():
    """{dotted module name: path} for every .py file of the package, plus its compiled extensions."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "costsmooth")):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)
            if name.endswith(".py"):
                out[rel[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
            elif name.endswith((".so", ".pyd")):
                out[rel.split(".")[0].replace(os.sep, ".")] = None
    out.setdefault("costsmooth._C", None)  # the extension, built or not
    return out


def _layer_violations():
    """Every breach of the three import rules, as (file, line, rule, what), and the import graph
    {module: {costsmooth module it imports (a name's own module for ``from m import name``): "file:line"}}.

    Private modules (``_checks``, the ``_C`` extension) are the package's shared internals; the names inside a
    module that start with ``_`` are that module's own."""
    modules = _package_modules()
    found, edges = [], {}
    for module, path in modules.items():
        if path is None:
            continue
        rel = os.path.relpath(path, ROOT)
        lines = open(path).read().splitlines()
        tree = ast.parse("\n".join(lines))
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        in_function = {}  # import inside a function -> that function
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                in_function.update((n, node) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
        commented = set()  # (function, top-level package) whose deferred import carries a comment
        bound = {}  # local name -> costsmooth module it refers to
        for node in sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                           key=lambda n: n.lineno):
            targets = []  # (costsmooth module imported, imported name or None)
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                for a in node.names:
                    if a.name.split(".")[0] == "costsmooth":
                        targets.append((a.name, None))
                        bound[a.asname or a.name.split(".")[0]] = a.asname and a.name or "costsmooth"
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                names = [base]
                if base.split(".")[0] == "costsmooth":
                    for a in node.names:
                        sub = f"{base}.{a.name}"
                        if sub in modules:
                            targets.append((sub, None))
                            bound[a.asname or a.name] = sub
                        else:
                            targets.append((base, a.name))
            for target, name in targets:
                edges.setdefault(module, {}).setdefault(target, f"{rel}:{node.lineno}")
                if name is not None and _is_private(name):
                    found.append((rel, node.lineno, "private", f"imports {name} from {target}"))
            if node in in_function:
                lazy_ok = not targets and all(any(n == ok or n.startswith(ok + ".") for ok in LAZY_IMPORTS_ALLOWED)
                                              for n in names)
                # the comment sits on the import, on the line above, or on an earlier import of the same package
                # in the same function (``import matplotlib  # why`` then ``import matplotlib.pyplot``)
                keys = {(in_function[node], n.split(".")[0]) for n in names}
                if any("#" in line for line in lines[max(node.lineno - 2, 0):node.end_lineno]):
                    commented |= keys
                if not lazy_ok:
                    found.append((rel, node.lineno, "lazy", f"imports {', '.join(names)} inside a function"))
                elif not keys <= commented:
                    found.append((rel, node.lineno, "lazy", f"imports {', '.join(names)} inside a function without "
                                  "a comment saying why it is deferred"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _is_private(node.attr) and f"{bound[node.value.id]}.{node.attr}" not in modules):
                found.append((rel, node.lineno, "private", f"uses {bound[node.value.id]}.{node.attr}"))
    # import circles: strongly connected groups of the graph of imports (module level or not), leaving out the
    # imports of files allowed a circle
    index, low, stack, on_stack = {}, {}, [], set()
    graph = {a: {b: where for b, where in out.items() if not _allowed(where.rsplit(":", 1)[0], "circle")}
             for a, out in edges.items()}

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while not group or w != v:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
            if len(group) > 1:
                for a in sorted(group):
                    for b, where in sorted(graph.get(a, {}).items()):
                        if b in group:
                            file, line = where.rsplit(":", 1)
                            found.append((file, int(line), "circle",
                                          f"{a} imports {b}, in a circle among {', '.join(sorted(group))}"))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found, edges


def _modules(edges=None):
    """{module: the costsmooth modules it imports, anywhere in the file} for every module of the package."""
    edges = _layer_violations()[1] if edges is None else edges
    return {m: set(edges.get(m, ())) for m in _package_modules()}


RULES = {"circle": "no import circle",
         "lazy": "imports at the top of the module; inside a function only an optional heavy dependency ("
                 + ", ".join(LAZY_IMPORTS_ALLOWED) + ") with a comment saying why",
         "private": "no private name (_x) of one costsmooth module used by another: make it public or move it"}


def test_imports_run_one_way():
    """engine (ops, sampling) -> certificates (stats, certify, ...) -> Smooth -> runs and result files -> commands
    -> cli, with no circle, imports at the top of each module (inside a function only a commented optional heavy
    dependency) and no private name of one module used by another."""
    found, edges = _layer_violations()
    found = sorted(v for v in found if not _allowed(v[0], v[2]))
    assert not found, (f"{len(found)} breaches of the import rules\n"
                       + "".join(f"  {rule}: {text}\n" for rule, text in RULES.items())
                       + "\n".join(f"{file}:{line}: {what} [{rule}]" for file, line, rule, what in found))
    modules = _modules(edges)
    assert "costsmooth.cli" in modules and "costsmooth.sampling" in modules
    # the command line is on top: only ``python -m costsmooth`` imports it
    assert sorted(m for m, deps in modules.items() if "costsmooth.cli" in deps) == ["costsmooth.__main__"]
    # shared argument helpers sit below every command
    assert not modules["costsmooth.args"] & COMMANDS
    # the engine and the certificates never reach up to runs or commands, not even lazily
    for module in ENGINE_AND_CERTIFICATES:
        assert not modules[module] & COMMANDS, (module, modules[module] & COMMANDS)
    assert "costsmooth.demo" not in modules["costsmooth.train"]  # the demo builds on train, not the reverse


# The package's floors, bottom up. A module imports only modules on its own floor or below; the package root
# (``costsmooth``: __version__, build_info) is the one arrow up. README's "Layout" section shows the same floors.
# A new module gets a floor here (the test fails until it has one).
FLOORS = [
    ("foundations", {"_C", "_checks", "progress", "cost", "sound"}),
    ("engine", {"ops", "reference", "sampling", "packing"}),
    ("certificates", {"stats", "certify", "sequential", "input_dependent_certify", "calibration.bounds"}),
    ("smoothed classifier", {"smooth", "calibration.confidence"}),
    ("data and models", {"data", "models"}),
    ("training", {"attacks", "losses", "mixup", "calibration.act", "calibration.attacks"}),
    ("runs and result files", {"results", "metrics", "analysis", "runs"}),
    ("seed features and commands", {"args", "input_dependent", "fairness_synthetic", "fairness", "calibration",
                                    "calibration.report", "distributed", "train", "demo", "cli", "__main__"}),
]


def _floor(module):
    """The floor number of a costsmooth module (a subpackage's modules take its floor unless listed)."""
    name = module.removeprefix("costsmooth.")
    matches = [(len(key), k) for k, (_, keys) in enumerate(FLOORS) for key in keys
               if name == key or name.startswith(key + ".")]
    return max(matches)[1] if matches else None


def test_every_module_has_a_floor_and_imports_only_its_floor_or_below():
    modules = _modules()
    unplaced = sorted(m for m in modules if m != "costsmooth" and _floor(m) is None)
    assert not unplaced, f"give these modules a floor in FLOORS: {unplaced}"
    upward = sorted(f"{m} ({FLOORS[_floor(m)][0]}) imports {d} ({FLOORS[_floor(d)][0]})"
                    for m, deps in modules.items() if m != "costsmooth"
                    for d in deps if d != "costsmooth" and _floor(d) > _floor(m))
    assert not upward, "imports that run up the floors:\n" + "\n".join(upward)


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
