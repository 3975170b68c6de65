"""Progress without a terminal: whole lines, a few of them, no carriage-return redraws."""
import io

from costsmooth.cli import main
from costsmooth.progress import progress_bar

from .test_cli import certify_args, files  # noqa: F401  (fixture)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_progress_is_a_few_whole_lines():
    log = io.StringIO()
    bar = progress_bar(total=10000, desc="run", file=log)
    for _ in range(10000):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and all(line.strip() for line in lines)
    assert "10000/10000" in lines[-1]
    term = Terminal()  # on a terminal: tqdm's redraws, as before
    bar = progress_bar(total=3, file=term, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in term.getvalue()


def test_certify_log_has_no_carriage_returns(files, capsys):
    assert main(certify_args(files, files / "p.tsv")) == 0  # progress on (no --quiet), stderr not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 4, err


def test_without_a_terminal_a_short_vanishing_bar_prints_nothing():
    log = io.StringIO()
    bar = progress_bar(range(20), desc="epoch 1/5", leave=False, file=log)
    for _ in bar:
        pass
    assert log.getvalue() == ""
