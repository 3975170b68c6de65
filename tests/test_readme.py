"""The README and docs stand on their own: no citations of an internal specification (the demo's tables
are regenerated and checked by ./run.sh python scripts/demo_tables.py [--check])."""
import glob
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_and_docstrings_cite_no_internal_specification():
    paths = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.md")) \
        + glob.glob(os.path.join(ROOT, "costsmooth", "**", "*.py"), recursive=True)
    cited = []
    for path in paths:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            if re.search(r"\bSPEC\b|§|as the issue|the issue (says|specifies)", line):
                cited.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not cited, "\n".join(cited)


def _documented_commands(path):
    """The ``costsmooth`` command lines of a markdown file: bash blocks (continuations joined, comments
    cut) and inline ``./run.sh COMMAND ...`` spans; each as (line text, argv after the program name)."""
    text = open(path, encoding="utf-8").read()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.split(" #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`(\./run\.sh [^`]+)`", text)
    commands = []
    for line in lines:
        match = re.search(r"(?:-m costsmooth(?: --)?|\./run\.sh|^costsmooth)\s+(.*)", line)
        if not match or line.startswith(("sbatch", "for ")):
            continue
        argv = shlex.split(re.sub(r"\[[^\]]*\]", "", match.group(1)))  # [--optional] flags are left out
        # A shell loop's variable and the docs' placeholders stand for a sigma; COMMAND for any command.
        argv = ["0.25" if a in ("$s", "SIGMA") else a for a in argv]
        if argv and argv[0] not in ("test", "bench", "python", "torchrun", "COMMAND"):
            commands.append((line, argv))
    return commands


def test_every_documented_command_line_is_accepted_by_the_parser():
    # Each `./run.sh certify ...`, `costsmooth merge ...`, `torchrun ... -m costsmooth ...` in the README and
    # docs must name flags and positionals the command takes: a renamed or removed flag fails here.
    from costsmooth.cli import build_parser
    parser = build_parser()
    paths = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    checked, refused = 0, []
    for path in paths:
        for line, argv in _documented_commands(path):
            try:
                parser.parse_args(argv)
                checked += 1
            except SystemExit:
                refused.append(f"{os.path.basename(path)}: {line}")
    assert not refused, "documented commands that the parser refuses:\n" + "\n".join(refused)
    assert checked >= 30, checked  # the README alone shows about two dozen


def test_python_api_examples_of_the_readme_run(tmp_path):
    # The README's first three Python blocks (Smooth and certificates, the sampling engine, a training loss)
    # run as written, on a digits_cnn checkpoint in place of the demo's and with fewer samples; the user
    # supplies only n and sigma of the engine block and the training batch.
    import torch
    from costsmooth.models import build_model, save_checkpoint
    path = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    save_checkpoint(str(path), build_model("digits_cnn", 10, (1, 8, 8)), "digits_cnn", 10, (1, 8, 8))
    blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
                        re.S)[:3]
    assert "load_model(" in blocks[0] and "sample_counts(" in blocks[1] and "loss.backward()" in blocks[2]
    code = blocks[0] + "n, sigma = 64, 0.25\n" + blocks[1] + "x_batch, y_batch = X, labels\n" + blocks[2]
    code = code.replace('"demo_out/gaussian/checkpoint.pt"', repr(str(path))).replace("100_000", "300")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["counts"].shape == (8, 10) and int(scope["counts"].sum()) == 2 * 8 * 64  # summed twice
    assert len(scope["certs"]) == 8 and scope["sums"].dtype == torch.float64
    assert torch.isfinite(scope["loss"]) and scope["cert"].counts.sum() == 300


def test_readme_layout_names_every_module_and_kernel_file():
    # The Layout section is the map of the tree: a module or kernel file it does not name is missing from
    # it (data/'s modules are named as data/, cpu/ and cuda/ as mirrored folders).
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    layout = text[text.index("## Layout"):]
    missing = []
    for path in glob.glob(os.path.join(ROOT, "costsmooth", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, os.path.join(ROOT, "costsmooth"))
        if os.path.basename(rel) in ("__init__.py", "__main__.py") or rel.startswith("data" + os.sep):
            continue
        if rel not in layout:
            missing.append(f"costsmooth/{rel}")
    for path in glob.glob(os.path.join(ROOT, "csrc", "*.*")):
        if os.path.basename(path) not in layout:
            missing.append(os.path.relpath(path, ROOT))
    for folder in ("data/", "cpu/", "cuda/"):
        if folder not in layout:
            missing.append(folder)
    assert not missing, f"files the README's Layout section does not name: {missing}"


def test_readme_data_paragraph_names_every_dataset_the_commands_accept():
    from costsmooth.data import DATASET_NAMES
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    paragraph = text[text.index("Data (`costsmooth.data`"):][:800]
    names = re.findall(r"\b([a-z0-9_]+(?::ROOT)?)\b(?=,| or)", DATASET_NAMES)
    assert "wine" in names and "imagenet:ROOT" in names
    assert not [n for n in names if f"`{n}`" not in paragraph], names
