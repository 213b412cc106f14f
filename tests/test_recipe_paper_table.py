"""launch/paper_settings.yaml, the paper's settings point by point: every Qwen3 recipe, composed
through verl's real hydra config from its --dry-run, holds exactly the table's recipe column;
changing a value in a recipe (its script or an appended override) is caught and named; the table
launch/README.md shows is the one the YAML renders; the learning-rate row's claim (verl's cosine
stands in for the authors' linear decay) holds numerically; a malformed table is refused with a
message naming its row and field."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

import verl_avsd.plugin  # noqa: F401  registers the estimators, as in a run
from verl_avsd.verl_config import compose_verl_config

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("paper_settings", REPO / "launch" / "paper_settings.py")
paper_settings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_settings)

TABLE = paper_settings.load_table()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVSD_", "SLURM_"))}
    env["AVSD_PYTHON"] = sys.executable
    return env


@functools.cache
def composed(recipe: str, *extra: str):
    return compose_verl_config(paper_settings.recipe_overrides(recipe, *extra, env=clean_env()))


# ------------------------------------------------------------------ recipes = table ---------


@pytest.mark.parametrize("recipe", sorted(TABLE["recipes"]))
def test_recipe_holds_the_table_values(recipe):
    cfg = composed(recipe)
    assert paper_settings.mismatches(TABLE, recipe, cfg) == []
    # the table is not vacuous: every row with keys is checked in every recipe
    keyed_rows = [row for row in TABLE["settings"] if row.get("recipe")]
    checked = paper_settings.expected_values(TABLE, recipe)
    assert {setting for setting, _ in checked.values()} == {row["setting"] for row in keyed_rows}
    assert len(keyed_rows) >= 25


def test_every_recipe_is_in_the_table():
    on_disk = {p.name for p in (REPO / "launch" / "recipes").glob("*.sh")} - {"common.sh", "cpu_toy.sh"}
    assert on_disk == set(TABLE["recipes"])


def test_the_known_paper_differences_are_settled():
    """Issue 16's list, value by value, in the composed configs (not only in the table)."""
    avsd, grpo, rlsd = composed("math_avsd_qwen3_8b.sh"), composed("math_grpo_qwen3_8b.sh"), composed("math_rlsd_qwen3_8b.sh")
    optim, rollout = avsd.actor_rollout_ref.actor.optim, avsd.actor_rollout_ref.rollout
    assert optim.clip_grad == 0.1 and avsd.actor_rollout_ref.actor.grad_clip == 0.1
    assert (rollout.top_p, rollout.top_k) == (0.95, 20)
    assert avsd.trainer.total_training_steps == 200
    assert grpo.actor_rollout_ref.rollout.temperature == 1.0
    assert (optim.weight_decay, optim.lr_scheduler_type, optim.min_lr_ratio) == (0.0, "cosine", 0.6)
    assert paper_settings.composed_value(rlsd, "algorithm.avsd.teacher") == "current"
    assert paper_settings.composed_value(avsd, "algorithm.avsd.teacher") == "ref"


def _recipes_copy(tmp_path: Path) -> Path:
    """launch/ copied, so a recipe can be edited without touching the checkout."""
    launch = tmp_path / "launch"
    shutil.copytree(REPO / "launch" / "recipes", launch / "recipes")
    shutil.copy(REPO / "launch" / "lib.sh", launch / "lib.sh")
    return launch / "recipes"


def test_an_edited_recipe_script_fails_the_check(tmp_path, monkeypatch):
    recipes = _recipes_copy(tmp_path)
    script = recipes / "math_avsd_qwen3_8b.sh"
    text = script.read_text()
    assert text.count("actor_rollout_ref.rollout.top_k=20\n") == 1
    script.write_text(text.replace("actor_rollout_ref.rollout.top_k=20\n", "actor_rollout_ref.rollout.top_k=40\n"))
    monkeypatch.setattr(paper_settings, "RECIPES", recipes)
    for recipe in ("math_avsd_qwen3_8b.sh", "math_opsd_qwen3_8b.sh"):  # OPSD runs the AVSD script
        cfg = compose_verl_config(paper_settings.recipe_overrides(recipe, env=clean_env()))
        assert paper_settings.mismatches(TABLE, recipe, cfg) == [
            f"{recipe}: Rollout top-p / top-k: actor_rollout_ref.rollout.top_k is 40, the table says 20"
        ]


@pytest.mark.parametrize(
    "recipe, override, setting",
    [
        ("math_avsd_qwen3_8b.sh", "actor_rollout_ref.actor.optim.clip_grad=1.0", "Gradient clipping (max grad norm)"),
        ("math_avsd_qwen3_8b.sh", "actor_rollout_ref.actor.optim.weight_decay=0.01", "Weight decay"),
        ("math_avsd_qwen3_8b.sh", "trainer.total_training_steps=500", "Training steps"),
        ("math_grpo_qwen3_8b.sh", "actor_rollout_ref.rollout.temperature=0.7", "Rollout temperature"),
        ("math_rlsd_qwen3_8b.sh", "algorithm.avsd.teacher=ref", "Teacher weights"),
        ("code_avsd_qwen3_8b.sh", "data.apply_chat_template_kwargs.enable_thinking=true", "Student thinking mode"),
        ("math_avsd_qwen3_8b.sh", "+algorithm.avsd.teacher_chat_template_kwargs={enable_thinking:true}", "Teacher thinking mode"),
        ("small_qwen3_1p7b_1gpu.sh", "actor_rollout_ref.model.lora_rank=64", "LoRA rank / alpha"),
    ],
)
def test_a_changed_value_is_named(recipe, override, setting):
    problems = paper_settings.mismatches(TABLE, recipe, composed(recipe, override))
    assert len(problems) == 1 and problems[0].startswith(f"{recipe}: {setting}: "), problems


# ------------------------------------------------------------------ README ------------------


def test_readme_shows_the_table():
    readme = (REPO / "launch" / "README.md").read_text()
    section = paper_settings.render_markdown(TABLE)
    assert section in readme, "launch/README.md is stale: run .venv/bin/python launch/paper_settings.py --write-readme"
    assert readme.count(paper_settings.HEADING) == 1
    # one table line per setting, five columns each
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + len(TABLE["settings"])
    assert all(line.count(" | ") == 4 for line in rows)
    # writing it again changes nothing
    assert paper_settings.readme_with_table(readme, section) == readme


def test_readme_section_is_appended_once_then_replaced():
    body = "# launch\n\ntext\n"
    first = paper_settings.readme_with_table(body, "## Paper settings, point by point\nSTALE-TABLE\n" + paper_settings.END + "\n")
    again = paper_settings.readme_with_table(first + "\n## Later\n", paper_settings.render_markdown(TABLE))
    assert again.startswith(body) and again.endswith("\n## Later\n") and "STALE-TABLE" not in again
    assert again.count(paper_settings.HEADING) == 1


# ------------------------------------------------------------------ the schedule claim ------


def test_cosine_schedule_stands_in_for_the_authors_linear_decay():
    """The table's learning-rate row: verl's cosine (its own scheduler, the table's values) over the
    recipe's 200 steps against transformers' linear decay over the authors' 500 steps, steps 0-199."""
    import torch
    from transformers import get_linear_schedule_with_warmup
    from verl.utils.torch_functional import get_cosine_schedule_with_warmup

    want = paper_settings.expected_values(TABLE, "math_avsd_qwen3_8b.sh")
    steps = want["trainer.total_training_steps"][1]
    lr = want["actor_rollout_ref.actor.optim.lr"][1]

    def trace(make):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched, out = make(opt), []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return torch.tensor(out, dtype=torch.float64)

    ours = trace(
        lambda opt: get_cosine_schedule_with_warmup(
            opt,
            0,
            steps,
            min_lr_ratio=want["actor_rollout_ref.actor.optim.min_lr_ratio"][1],
            num_cycles=want["actor_rollout_ref.actor.optim.num_cycles"][1],
        )
    )
    authors = trace(lambda opt: get_linear_schedule_with_warmup(opt, 0, 500))
    assert ours[0] == authors[0] == lr
    assert abs(float(ours[-1] - authors[-1])) < 0.01 * lr  # both near 3e-6 at the last step
    assert abs(float(ours.mean() - authors.mean())) < 1e-3 * lr  # the same mean (4e-6)
    assert float((ours - authors).abs().max()) < 0.043 * lr  # the "at most 4.3% of the peak" in the row
    assert "4.3%" in next(r["why"] for r in TABLE["settings"] if r["setting"] == "Learning-rate schedule")


# ------------------------------------------------------------------ a malformed table -------

GOOD_ROW = "  - {setting: S, paper: P, authors: A, source: X, recipe: {data.seed: 42}}\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("settings: [\n", "not valid YAML"),
        ("settings:\n" + GOOD_ROW, "needs a `recipes` mapping"),
        ("recipes: {a.sh: A}\nsettings: []\n", "needs a `settings` list"),
        (
            "recipes: {a.sh: A}\nsettings:\n  - {setting: S, authors: A, source: X, recipe: {k: 1}}\n",
            "settings row 1 (S): field `paper` must be non-empty text",
        ),
        (
            "recipes: {a.sh: A}\nsettings:\n"
            + GOOD_ROW
            + "  - {setting: T, paper: P, authors: A, source: X, recipe: {k: 1}, note: n}\n",
            "settings row 2 (T): unknown field(s) ['note']",
        ),
        (
            "recipes: {a.sh: A}\nsettings:\n  - {setting: S, paper: P, authors: A, source: X}\n",
            "settings row 1 (S): give either `recipe`",
        ),
        (
            "recipes: {a.sh: A}\nsettings:\n  - {setting: S, paper: P, authors: A, source: X, recipe: {k: 1}, recipe_text: t}\n",
            "settings row 1 (S): give either `recipe`",
        ),
        (
            "recipes: {a.sh: A}\nsettings:\n  - {setting: S, paper: P, authors: A, source: X, recipe: {k: 1}, except: {b.sh: {k: 2}}}\n",
            "settings row 1 (S): `except` names 'b.sh'",
        ),
        (
            "recipes: {a.sh: A}\nsettings:\n  - {setting: S, paper: P, authors: A, source: X, recipe: {k: 1}, except: {a.sh: {j: 2}}}\n",
            "settings row 1 (S): `except.a.sh` may only change keys",
        ),
        ("recipes: {a.sh: A}\nsettings:\n  - just text\n", "settings row 1: a row is a mapping"),
    ],
)
def test_a_malformed_table_is_refused_with_its_row_and_field(tmp_path, body, message):
    path = tmp_path / "paper_settings.yaml"
    path.write_text(body)
    with pytest.raises(paper_settings.PaperTableError) as err:
        paper_settings.load_table(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_key_the_config_lacks_is_reported():
    table = {
        "recipes": {"math_avsd_qwen3_8b.sh": "AVSD"},
        "settings": [{"setting": "S", "recipe": {"actor_rollout_ref.actor.optim.no_such_key": 1}}],
    }
    problems = paper_settings.mismatches(table, "math_avsd_qwen3_8b.sh", composed("math_avsd_qwen3_8b.sh"))
    assert problems == ["math_avsd_qwen3_8b.sh: S: 'actor_rollout_ref.actor.optim.no_such_key is not in the composed config'"]


def test_the_command_line_says_what_is_wrong_with_a_table(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes: {a.sh: A}\nsettings:\n  - {setting: S, paper: P, authors: A, source: X}\n")
    assert paper_settings.main(["--markdown", "--table", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{bad}: settings row 1 (S): give either `recipe`" in err
    assert paper_settings.main(["--markdown"]) == 0
    assert capsys.readouterr().out == paper_settings.render_markdown(TABLE)
