"""The README's demo tables, regenerated from the demo's own output (or checked against it).

    ./run.sh python scripts/demo_tables.py                  # full digits and breast_cancer demos: rewrite README.md
    ./run.sh python scripts/demo_tables.py --check          # the same, but exit 1 naming each table that differs
    ./run.sh python scripts/demo_tables.py --quick --check  # the --quick digits table only (the test suite runs this)
    ./run.sh python scripts/demo_tables.py --dataset digits # one dataset's full table

Each table sits in README.md between ``<!-- demo-table KEY -->`` and ``<!-- /demo-table -->`` and is
exactly what ``./run.sh demo [--quick] [--dataset D]`` prints under "The README's table". The demos run
in a fresh directory (``--out`` to reuse one), with the demo's defaults (seed 0, CPU).
"""
import argparse
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FULL = [("digits", False), ("breast_cancer", False)]
QUICK = [("digits", True)]


def key(dataset: str, quick: bool) -> str:
    return dataset + (" --quick" if quick else "")


def pattern(k: str):
    return re.compile(r"(<!-- demo-table " + re.escape(k) + r" -->\n)(.*?)(\n<!-- /demo-table -->)", re.S)


def readme_table(text: str, k: str) -> str:
    found = pattern(k).search(text)
    if not found:
        raise SystemExit(f"README.md has no <!-- demo-table {k} --> block")
    return found.group(2).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the --quick digits table (seconds, not minutes)")
    parser.add_argument("--check", action="store_true", help="compare, do not write; exit 1 when a table differs")
    parser.add_argument("--dataset", choices=[d for d, _ in FULL], help="only this dataset's full table")
    parser.add_argument("--out", help="demo output directory (default: a fresh temporary one; an existing one "
                                      "resumes the demo's finished pieces)")
    args = parser.parse_args(argv)

    from costsmooth.demo import readme_table as render, run_demo

    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, quick in QUICK if args.quick else [c for c in FULL if args.dataset in (None, c[0])]:
            rows = run_demo(dataset, os.path.join(args.out or tmp, dataset), quick=quick, progress=False)
            tables[key(dataset, quick)] = render(rows, dataset)
    text = open(README).read()  # read after the demos: edits made while they ran are kept
    differ = [k for k, table in tables.items() if readme_table(text, k) != table]
    for k in differ:
        text = pattern(k).sub(lambda m: m.group(1) + tables[k] + m.group(3), text)
    if args.check:
        for k in differ:
            print(f"README.md's demo table '{k}' differs from the demo's output; regenerate it: ./run.sh python "
                  f"scripts/demo_tables.py{' --quick' if '--quick' in k else ''}", file=sys.stderr)
        return 1 if differ else 0
    with open(README, "w") as f:
        f.write(text)
    print(f"README.md: {len(differ)} table(s) updated ({', '.join(differ) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
