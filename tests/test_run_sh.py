"""run.sh: Python and torchrun with costsmooth importable, and a silent, setup.py-free up-to-date check."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.sh")


def run(*args, cwd):
    return subprocess.run(["bash", RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_run_sh_python_imports_this_checkout(tmp_path):
    script = tmp_path / "api.py"
    script.write_text("import costsmooth, torch\nprint(costsmooth.__file__)\nprint(costsmooth.build_info()['version'])\n")
    res = run("python", "api.py", cwd=tmp_path)  # relative to the caller's directory
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == os.path.join(ROOT, "costsmooth", "__init__.py")


def test_up_to_date_check_is_silent_and_skips_setup_py(tmp_path):
    with open(os.path.join(ROOT, "build", "costsmooth-build.stamp"), "w") as f:
        f.write("stale\n")  # as after an edit of the sources: setup.py runs (a no-op build here)
    res = run("info", cwd=tmp_path)
    assert res.returncode == 0, res.stderr  # records the stamp
    # A build says so before it starts (a first build runs for minutes with no other output).
    assert res.stderr.startswith("costsmooth: building the extension"), res.stderr
    log = os.path.join(ROOT, "build", "costsmooth-build.log")
    before = os.stat(log).st_mtime_ns
    res = run("info", cwd=tmp_path)
    assert res.returncode == 0 and "version:" in res.stdout
    assert res.stderr == ""  # no "costsmooth build:" line when nothing was built
    assert os.stat(log).st_mtime_ns == before  # setup.py was not run


def test_run_sh_test_runs_only_the_files_it_is_given(tmp_path):
    res = run("test", "-q", "--collect-only", "tests/test_help.py", "-k", "data_first", cwd=ROOT)
    assert res.returncode == 0, res.stderr
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert collected == ["tests/test_help.py::test_commands_taking_data_and_model_take_data_first"], res.stdout
    res = run("test", "-q", "--collect-only", "--deselect", "tests/test_help.py::test_commands_taking_data_and_"
              "model_take_data_first", "-p", "no:cacheprovider", cwd=ROOT)
    assert res.returncode == 0, res.stderr
    files = {line.split("::")[0] for line in res.stdout.splitlines() if "::" in line}
    assert len(files) > 10  # the whole suite, less the one test
