"""`make new NAME=<name>` in a copy of the repository: the new project trains with `make train`
and passes its own learning test and the smoke test, with no edit anywhere else."""

import shutil
import subprocess

import pytest

from common.errors import UserError
from common.scaffold import camel, main, plan
from tests.conftest import PYTHON, ROOT, run
from tests.test_process import VENV, user_env


def copy_of_the_repo(dest):
    """The working tree as a clean clone would have it: tracked and untracked files that git
    does not ignore (no .venv, logs or data)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow  # about 20 s: a make train and a pytest run in the copy
def test_make_new_project_trains_and_passes_its_tests(tmp_path):
    repo = copy_of_the_repo(tmp_path / "repo")
    env = user_env(tmp_path)
    new = run("make", "-s", f"VENV={VENV}", "new", "NAME=demo", env=env, cwd=repo)
    assert new.returncode == 0, new.stderr
    assert "wrote projects/demo/data.py" in new.stdout
    assert "class DemoData(DataModule)" in (repo / "projects/demo/data.py").read_text()

    trained = run(
        "make", "-s", f"VENV={VENV}", "train", "PROJECT=demo", "trainer.max_epochs=1",
        env=env, cwd=repo, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test/acc" in trained.stdout and (tmp_path / "logs" / "demo").is_dir()

    tests = ["tests/test_demo.py", "tests/test_smoke.py::test_fast_dev_run[demo]"]
    tested = run(PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, env=env, cwd=repo)
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert "2 passed" in tested.stdout


@pytest.mark.parametrize(
    "name, message",
    [("Demo", "lowercase Python identifier"), ("2d", "lowercase"), ("class", "cannot be"),
     ("mnist", "is taken"), ("", "cannot be a project")],
)  # fmt: skip
def test_names_that_cannot_be_projects_are_refused(name, message):
    with pytest.raises(UserError, match=message):
        plan(name)


def test_make_new_without_a_name_is_one_readable_error(capsys):
    assert main([]) == 1  # what `make new` runs when NAME is not given
    assert "error: NAME='' cannot be a project" in capsys.readouterr().err


def test_class_names_are_camel_case():
    assert camel("demo") == "Demo" and camel("my_audio_net") == "MyAudioNet"
