"""The paper's settings, point by point. `launch/paper_settings.yaml` is the one table (setting, paper,
authors' script, recipe, source); this module reads it, checks each recipe's composed verl config
against it, and renders it as the markdown table that launch/README.md shows.

    python launch/paper_settings.py --check         # compose every recipe (dry run) and compare
    python launch/paper_settings.py --markdown      # print the README section
    python launch/paper_settings.py --write-readme  # put that section into launch/README.md

Run it with the interpreter that has verl-avsd installed (.venv/bin/python). Nothing trains: each
recipe runs with --dry-run and its printed overrides are composed into verl's real hydra config,
as `python -m verl.trainer.main_ppo` would see them."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

LAUNCH = Path(__file__).resolve().parent
TABLE = LAUNCH / "paper_settings.yaml"
README = LAUNCH / "README.md"
RECIPES = LAUNCH / "recipes"
ROW_FIELDS = {"setting", "paper", "authors", "recipe", "recipe_text", "except", "why", "source"}
REQUIRED = ("setting", "paper", "authors", "source")
BEGIN = "<!-- paper-settings table: generated from launch/paper_settings.yaml; edit that file -->"
END = "<!-- end of paper-settings table -->"
HEADING = "## Paper settings, point by point"
INTRO = """\
What `launch/recipes/*_qwen3_8b.sh` (and the 1-GPU recipe) run, next to what the AVSD paper
(arXiv 2605.20643) and the authors' released code (duykhuongnguyen/AVSD at 3233099, with the trl,
transformers and accelerate defaults it runs on) use. The **paper** column holds the paper's
abstract and its Table 3 as issue 16 quotes it; "—" means the paper text at hand does not say, and
the authors' script is then the reference. The **recipe** column is what the composed verl config
holds: `tests/test_recipe_paper_table.py` composes every recipe and fails on any value that differs
from it. The table lives in `launch/paper_settings.yaml`; after editing it, run
`.venv/bin/python launch/paper_settings.py --write-readme` (and `--check` to compare the recipes).
The paper's numbers are at step 200: evaluate `checkpoints/global_step_200` with `verl-avsd eval`."""


class PaperTableError(ValueError):
    """launch/paper_settings.yaml is malformed; the message names the row and field."""


# ------------------------------------------------------------------ the table ---------------


def load_table(path: Path = TABLE) -> dict:
    """The table, checked: every row has its fields, `recipe` keys or a `recipe_text`, and `except`
    names only recipes the table lists and only keys the row's `recipe` sets."""
    try:
        table = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise PaperTableError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(table, dict) or not isinstance(table.get("recipes"), dict) or not table["recipes"]:
        raise PaperTableError(f"{path}: needs a `recipes` mapping (recipe file -> label)")
    if not isinstance(table.get("settings"), list) or not table["settings"]:
        raise PaperTableError(f"{path}: needs a `settings` list")
    recipes = table["recipes"]
    for i, row in enumerate(table["settings"], 1):
        where = f"{path}: settings row {i}"
        if not isinstance(row, dict):
            raise PaperTableError(f"{where}: a row is a mapping, got {row!r}")
        where += f" ({row.get('setting', '?')})"
        unknown = set(row) - ROW_FIELDS
        if unknown:
            raise PaperTableError(f"{where}: unknown field(s) {sorted(unknown)}; fields: {sorted(ROW_FIELDS)}")
        for field in REQUIRED:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise PaperTableError(f"{where}: field `{field}` must be non-empty text")
        keys = row.get("recipe")
        if (keys is None) == (row.get("recipe_text") is None):
            raise PaperTableError(f"{where}: give either `recipe` (hydra keys and values) or `recipe_text`, not both")
        if keys is not None and (not isinstance(keys, dict) or not keys):
            raise PaperTableError(f"{where}: field `recipe` must map hydra keys to values")
        for recipe, values in (row.get("except") or {}).items():
            if recipe not in recipes:
                raise PaperTableError(f"{where}: `except` names {recipe!r}, which `recipes` does not list")
            if keys is None or not isinstance(values, dict) or not set(values) <= set(keys):
                raise PaperTableError(f"{where}: `except.{recipe}` may only change keys the row's `recipe` sets")
    return table


def expected_values(table: dict, recipe: str) -> dict[str, tuple[str, object]]:
    """{hydra key: (setting, value)} that `recipe`'s composed config must hold."""
    out = {}
    for row in table["settings"]:
        values = dict(row.get("recipe") or {})
        values.update((row.get("except") or {}).get(recipe, {}))
        for key, value in values.items():
            out[key] = (row["setting"], value)
    return out


# ------------------------------------------------------------------ the recipes -------------


def recipe_overrides(recipe: str, *extra: str, env: dict | None = None) -> list[str]:
    """The hydra overrides `launch/recipes/RECIPE --dry-run EXTRA...` prints, in a clean environment
    (no AVSD_* a developer exported) with this interpreter."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AVSD_", "SLURM_"))}
        env["AVSD_PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", str(RECIPES / recipe), "--dry-run", *extra],
        cwd=LAUNCH.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"launch/recipes/{recipe} --dry-run failed ({result.returncode}):\n{result.stderr}")
    words = shlex.split(result.stdout.replace("\\\n", " "))
    return words[words.index("verl.trainer.main_ppo") + 1 :]


def composed_value(cfg, key: str):
    """A key of a composed verl config as plain data; `algorithm.avsd.*` through the AVSD options
    (their defaults apply where a recipe sets nothing)."""
    from omegaconf import OmegaConf

    from verl_avsd.config import avsd_config

    if key.startswith("algorithm.avsd."):
        node, leaf = OmegaConf.create(avsd_config(cfg.algorithm).to_dict()), key.removeprefix("algorithm.avsd.")
    else:
        node, leaf = cfg, key
    missing = object()
    value = OmegaConf.select(node, leaf, default=missing)
    if value is missing:
        raise KeyError(f"{key} is not in the composed config")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def mismatches(table: dict, recipe: str, cfg) -> list[str]:
    """One line per key whose composed value differs from the table, naming the setting."""
    lines = []
    for key, (setting, want) in expected_values(table, recipe).items():
        try:
            got = composed_value(cfg, key)
        except KeyError as e:
            lines.append(f"{recipe}: {setting}: {e}")
            continue
        if got != want or (type(got) is bool) != (type(want) is bool):
            lines.append(f"{recipe}: {setting}: {key} is {got!r}, the table says {want!r}")
    return lines


def check(table: dict) -> list[str]:
    from verl_avsd.verl_config import compose_verl_config

    found = sorted(p.name for p in RECIPES.glob("*.sh") if p.name not in ("common.sh", "cpu_toy.sh"))
    problems = [f"launch/recipes/{name} is not in the table's `recipes`" for name in found if name not in table["recipes"]]
    for recipe in table["recipes"]:
        problems += mismatches(table, recipe, compose_verl_config(recipe_overrides(recipe)))
    return problems


# ------------------------------------------------------------------ markdown ----------------


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _value(value) -> str:
    """As a hydra override writes it: true, [a,b], 5e-6, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    return str(value)


def recipe_cell(table: dict, row: dict) -> str:
    if row.get("recipe") is None:
        text = row["recipe_text"]
    else:
        text = ", ".join(f"`{k}={_value(v)}`" for k, v in row["recipe"].items())
        for recipe, values in (row.get("except") or {}).items():
            text += f"; {table['recipes'][recipe]}: " + ", ".join(
                f"`{k.rsplit('.', 1)[-1]}={_value(v)}`" for k, v in values.items()
            )
    if row.get("why"):
        text += f" — {row['why']}"
    return _cell(text)


def render_markdown(table: dict) -> str:
    lines = [
        HEADING,
        "",
        INTRO,
        "",
        BEGIN,
        "",
        "| setting | paper | authors' script | recipe | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in table["settings"]:
        cells = [row["setting"], row["paper"], row["authors"], recipe_cell(table, row), row["source"]]
        lines.append("| " + " | ".join(_cell(c) if i != 3 else c for i, c in enumerate(cells)) + " |")
    labels = ", ".join(f"{label} = `recipes/{name}`" for name, label in table["recipes"].items())
    lines += ["", f"Recipe names: {labels}.", "", END]
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, section: str) -> str:
    """launch/README.md with the section replaced where it is, or appended at the end."""
    start = readme.find(HEADING)
    if start < 0:
        return readme.rstrip("\n") + "\n\n" + section
    end = readme.find(END, start)
    if end < 0:
        raise PaperTableError(f"{README}: '{HEADING}' without its end marker {END!r}")
    return readme[:start] + section + readme[end + len(END) + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--check", action="store_true", help="compose every recipe and compare it with the table")
    what.add_argument("--markdown", action="store_true", help="print the README section")
    what.add_argument("--write-readme", action="store_true", help="put the section into launch/README.md")
    parser.add_argument("--table", type=Path, default=TABLE, help=f"the table (default: {TABLE})")
    args = parser.parse_args(argv)
    try:
        table = load_table(args.table)
    except PaperTableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        sys.stdout.write(render_markdown(table))
    elif args.write_readme:
        README.write_text(readme_with_table(README.read_text(), render_markdown(table)))
        print(f"wrote the table into {README}")
    else:
        problems = check(table)
        print("\n".join(problems) if problems else f"all {len(table['recipes'])} recipes match the table")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
