"""What the package's PNGs show: legends beside the data (never over a curve or a bar), titles naming the run."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from costsmooth.cli import main  # noqa: E402
from costsmooth.fairness import run_title  # noqa: E402

from .test_cli import certify_args, files  # noqa: F401,E402  (fixture)


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the package closes after saving them, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        matplotlib.pyplot.figure(fig.number) if fig is not None else None
    plt.close("all")


def legends_clear_of_axes(fig):
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers a panel"


def test_curves_legend_covers_no_panel(files, saved_figures, tmp_path):
    out = files / "c.tsv"
    assert main(certify_args(files, out, "--quiet", "--seed-classes", "0", "--targets", "2")) == 0
    assert main(["analyze", str(out), str(out), "--plot", str(tmp_path / "curves.png")]) == 0
    (fig,) = saved_figures
    assert len(fig.axes) == 4
    legends_clear_of_axes(fig)


def test_fairness_plot_is_titled_with_the_run(files, saved_figures, tmp_path):
    assert run_title("runs/gauss/checkpoint.pt", "digits", 0.25) == "gauss on digits, sigma=0.25"
    assert run_title("models/resnet.pt", "cifar10", 0.5) == "resnet.pt on cifar10, sigma=0.5"
    assert main(["fairness", str(files / "data.pt"), str(files / "model.pt"), "--split", "all", "--sigma", "0.5",
                 "--N0", "16", "--N", "100", "--steps", "2", "--out", str(tmp_path / "f"), "--quiet"]) == 0
    (fig,) = saved_figures
    assert fig.axes[0].get_title() == "model.pt on data.pt, sigma=0.5"
    legends_clear_of_axes(fig)
