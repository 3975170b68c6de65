"""certify under torchrun as the README writes it: no certify option is claimed by torchrun's own parser,
the README's torchrun lines run as written (2 gloo processes on the CPU), and the summary counts every rank."""
import argparse
import os
import re
import shlex
import subprocess

import pytest
import torch

from costsmooth.cli import build_parser, main
from costsmooth.models import build_model, save_checkpoint
from costsmooth.results import read_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torchrun_parser = pytest.importorskip("torch.distributed.run").get_args_parser


def certify_options():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted({o for a in sub.choices["certify"]._actions for o in a.option_strings if o.startswith("--")})


def script_args(argv):
    """What torchrun passes to ``-m costsmooth`` (SystemExit when torchrun's parser refuses the line)."""
    args = torchrun_parser().parse_args(argv)
    assert args.module and args.training_script == "costsmooth"
    return args.training_script_args


def test_torchrun_claims_no_certify_option_but_cohens_max():
    base = ["--standalone", "--nproc-per-node", "2", "-m", "costsmooth", "certify", "digits", "m.pt", "0.25", "o.tsv"]
    claimed = []
    for option in certify_options():
        try:
            passed = script_args(base + [option, "1"])
        except SystemExit:
            claimed.append(option)
            continue
        assert passed[-2:] == [option, "1"], option
    # --max is Cohen et al.'s name (kept for single-process runs); torchrun reads it as --max-restarts
    assert claimed == ["--max"]
    assert script_args(base + ["--max-index", "40"])[-2:] == ["--max-index", "40"]
    assert script_args(["-m", "costsmooth", "--", "certify", "digits", "m.pt", "0.25", "o.tsv", "--max", "4"])
    assert build_parser().parse_args(["certify", "d", "m", "0.25", "o", "--max-index", "40"]).max == 40


def test_a_leading_separator_is_accepted(capsys):
    assert main(["--", "info"]) == 0
    assert "version" in capsys.readouterr().out


def readme_torchrun_lines():
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if re.match(r"(\./run\.sh )?torchrun ", line):
                lines.append(line)
    return lines


def test_readme_torchrun_lines_parse_as_written():
    lines = readme_torchrun_lines()
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line)
        argv = argv[2:] if argv[0] == "./run.sh" else argv[1:]
        passed = script_args(argv)
        if "..." not in passed:
            build_parser().parse_args(passed)  # costsmooth's parser takes what torchrun passes on


def test_readme_torchrun_lines_run_as_written(tmp_path):
    runnable = [line for line in readme_torchrun_lines() if line.startswith("./run.sh torchrun") and "..." not in line]
    assert len(runnable) >= 2
    torch.manual_seed(0)
    ckpt = tmp_path / "demo_out" / "gaussian" / "checkpoint.pt"  # the path the README's lines certify
    ckpt.parent.mkdir(parents=True)
    save_checkpoint(str(ckpt), build_model("digits_cnn", 10, (1, 8, 8)), "digits_cnn", 10, (1, 8, 8))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for line in runnable:
        argv = shlex.split(line)
        res = subprocess.run(["bash", os.path.join(ROOT, "run.sh")] + argv[1:] + ["--quiet"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (line, res.stderr[-3000:])
        args = build_parser().parse_args(script_args(argv[2:]))
        rows = read_tsv(str(tmp_path / args.outfile))
        assert [int(r["idx"]) for r in rows] == list(range(args.max))
        # the summary counts every rank's inputs and samples
        n = len(rows)
        assert f"{n} inputs ({n} certified now" in res.stdout, res.stdout
        assert f"{n * (args.N0 + args.N):,} samples" in res.stdout, res.stdout
