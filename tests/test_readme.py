"""The README and docs stand on their own: no citations of an internal specification (the demo's tables
are regenerated and checked by ./run.sh python scripts/demo_tables.py [--check])."""
import glob
import os
import re

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
