"""What `make <verb>` runs: turn make's command line into a Hydra command, then exec it.

A verb is an entry point `common/<verb>.py` with its config `configs/<verb>.yaml` (train, eval,
predict, sample, ...): found on disk, so a new verb is those two files and no edit here.

GNU make keeps command-line `key=value` words in the MAKEFLAGS environment variable, after
` -- `, newest first, with spaces escaped as `\\ `, backslashes doubled and `$` doubled. This
parser undoes that, so `make train PROJECT=<name> a.b=1 'c=[0,1]' 'd=x y'` reaches Hydra exactly as
typed. UPPERCASE words are make's own (PROJECT, ARGS, DRY); everything else goes to Hydra.

Kept free of torch imports so errors here (unknown project) come back instantly.
"""

import os
import re
import shlex
import sys
from pathlib import Path

COMMON = Path(__file__).resolve().parent
CONFIGS = COMMON.parent / "configs"


def first_comment(path: Path) -> str:
    """A YAML file's first comment line (after a `# @package` line): its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def verbs() -> dict[str, str]:
    """Verb -> one-line description, for every configs/<verb>.yaml with a common/<verb>.py."""
    return {
        path.stem: first_comment(path)
        for path in sorted(CONFIGS.glob("*.yaml"))
        if (COMMON / f"{path.stem}.py").is_file()
    }


def projects() -> dict[str, str]:
    """Project name -> one-line description (the project config's first comment)."""
    return {path.stem: first_comment(path) for path in sorted((CONFIGS / "project").glob("*.yaml"))}


def makeflags_overrides(makeflags: str) -> list[str]:
    """The `key=value` words of a MAKEFLAGS string, unescaped, in the order they were typed."""
    if " -- " in f" {makeflags}":
        assignments = f" {makeflags}".split(" -- ", 1)[1]
    else:
        return []
    words, current, i = [], [], 0
    while i < len(assignments):
        ch = assignments[i]
        if ch == "\\" and i + 1 < len(assignments):
            current.append(assignments[i + 1])
            i += 2
            continue
        if ch == "$" and assignments[i + 1 : i + 2] == "$":
            current.append("$")
            i += 2
            continue
        if ch == " ":
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if current:
        words.append("".join(current))
    return list(reversed(words))  # make stores the newest first


def is_make_variable(word: str) -> bool:
    name = word.split("=", 1)[0]
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", name))


# Hydra's command-line options that take a value (`--cfg job`), and `--info`'s optional one.
VALUE_FLAGS = {
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_args(args: str) -> tuple[list[str], list[str]]:
    """ARGS words -> (Hydra options with their values, overrides).

    Hydra's argparse reads options only before the overrides, so the launcher puts them first.
    """
    words, options, overrides = shlex.split(args), [], []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            options.append(word)
            takes_value = word in VALUE_FLAGS or (
                word in ("-i", "--info") and i + 1 < len(words) and words[i + 1] in INFO_TOPICS
            )
            if takes_value and i + 1 < len(words):
                options.append(words[i + 1])
                i += 1
        else:
            overrides.append(word)
        i += 1
    return options, overrides


def build_command(task: str, project: str, overrides: list[str], args: str) -> list[str]:
    options, arg_overrides = split_args(args)
    return [
        sys.executable,
        "-m",
        f"common.{task}",
        *options,
        f"project={project}",
        *overrides,
        *arg_overrides,
    ]


def print_table(rows: dict[str, str]) -> None:
    width = max(map(len, rows), default=0)
    for name, description in rows.items():
        print(f"{name:<{width}}  {description}")


def main(argv: list[str]) -> int:
    task = argv[0] if argv else ""
    if task in ("list", "verbs"):
        print_table(projects() if task == "list" else verbs())
        return 0
    if task not in verbs():
        print(
            f"usage: python -m common.launcher {{{','.join(verbs())},list,verbs}}", file=sys.stderr
        )
        return 2

    project = os.environ.get("PROJECT", "")  # the Makefile's, with its default
    known = projects()
    if project not in known:
        print(
            f"error: unknown project '{project}'. Valid projects: {', '.join(known)} "
            "(`make list` describes them)",
            file=sys.stderr,
        )
        return 2
    words = makeflags_overrides(os.environ.get("MAKEFLAGS", ""))
    overrides = [w for w in words if not is_make_variable(w)]
    try:
        command = build_command(task, project, overrides, os.environ.get("ARGS", ""))
    except ValueError as err:  # shlex: unbalanced quotes in ARGS
        print(f"error: cannot parse ARGS: {err}", file=sys.stderr)
        return 2
    shown = shlex.join(["python", *command[1:]])
    if os.environ.get("DRY"):
        print(shown)
        return 0
    print(f"$ {shown}", file=sys.stderr)
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
