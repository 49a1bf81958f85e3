"""`make new NAME=<name>`: a new project from the template, ready to train and test.

The template (templates/project/) is a miniature of the repository: a project folder, its three
configs and its learning test, written for the name `newproject` (class names `NewProject...`).
Each file is copied to the same place here with the new name in its path and text, so the
project trains with `make train PROJECT=<name>` and passes its tests at once, with no edit
anywhere else: the smoke tests, `make list` and the launcher find projects on disk.
"""

import keyword
import re
import sys
from pathlib import Path

from common.errors import UserError
from common.resolvers import REPO_ROOT

TEMPLATE = REPO_ROOT / "templates" / "project"
TOKEN, CAMEL_TOKEN = "newproject", "NewProject"  # the name the template is written for


def camel(name: str) -> str:
    """my_project -> MyProject, for class names."""
    return "".join(part.capitalize() for part in name.split("_"))


def plan(name: str, root: Path = REPO_ROOT) -> dict[Path, Path]:
    """Template file -> where it goes for project `name`; a UserError for a name that cannot be
    a project or is taken."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or "") or keyword.iskeyword(name):
        raise UserError(
            f"NAME={name!r} cannot be a project: a lowercase Python identifier is needed "
            "(letters, digits and _, starting with a letter), e.g. make new NAME=audio"
        )
    targets = {
        source: root / str(source.relative_to(TEMPLATE)).replace(TOKEN, name)
        for source in sorted(TEMPLATE.rglob("*"))
        if source.is_file() and "__pycache__" not in source.parts
    }
    taken = [str(t.relative_to(root)) for t in targets.values() if t.exists()]
    if taken or (root / "projects" / name).exists():
        raise UserError(
            f"NAME={name} is taken: {', '.join(taken) or f'projects/{name}'} already exists. "
            "Pick another name"
        )
    return targets


def scaffold(name: str, root: Path = REPO_ROOT) -> list[Path]:
    """Write project `name` from the template under `root`; return the files written."""
    targets = plan(name, root)
    for source, target in targets.items():
        text = source.read_text().replace(CAMEL_TOKEN, camel(name)).replace(TOKEN, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return list(targets.values())


def main(argv: list[str]) -> int:
    name = argv[0] if argv else ""
    try:
        written = scaffold(name)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    print(
        f"\nnext: make train PROJECT={name}    (then edit projects/{name}/data.py, nets.py, "
        f"model.py and its README; its tests: pytest tests/test_{name}.py)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
