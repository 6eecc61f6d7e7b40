"""Pipelines: validation before anything runs, what a rerun skips, and real tiny runs of SFT then DPO."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from alignment.cli import main as cli_main
from alignment.errors import RecipeError
from alignment.pipeline import (
    MARKER,
    is_pipeline_file,
    load_pipeline,
    plan_pipeline,
    run_pipeline,
    to_cli,
    write_marker,
)
from alignment.reruns import read_run_recipe, write_run_recipe
from tests.conftest import RECIPES, REPO, TINY_DPO, TINY_SFT

QUICK = {"max_steps": 3, "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "report_to": "none"}


def write_pipeline(folder: Path, *stages: dict, name: str = "pipe", **top) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**top, "stages": list(stages)}, sort_keys=False))
    return path


def sft_stage(**overrides) -> dict:
    return {"name": "sft", "stage": "sft", "recipe": str(TINY_SFT),
            "overrides": {**QUICK, "output_dir": "runs/pipe/sft", **overrides}}  # fmt: skip


def dpo_stage(**overrides) -> dict:
    return {"name": "dpo", "stage": "dpo", "recipe": str(TINY_DPO),
            "overrides": {**QUICK, "output_dir": "runs/pipe/dpo", **overrides}}  # fmt: skip


def eval_stage(**overrides) -> dict:
    return {"name": "eval", "stage": "eval",
            "overrides": {"output_dir": "runs/pipe/eval", "prompts": "data/tiny/eval.jsonl", "max_rows": 10,
                          **overrides}}  # fmt: skip


def actions(plans) -> list[tuple[str, str, bool]]:
    return [(p.stage.name, p.action, p.overwrite) for p in plans]


# --- Validation: one line naming the key, nothing run ---------------------------------------------------


@pytest.mark.parametrize(
    "stages, top, expected",
    [
        ([sft_stage()], {"stagse_dir": 1}, "pipe.yaml: unknown key `stagse_dir`"),
        ([{**sft_stage(), "overides": {}}], {}, "stages[0] (sft): unknown key `overides`; did you mean `overrides`?"),
        ([sft_stage(), dpo_stage(ref_model="@rm")], {},
         "stages[1] (dpo): `overrides.ref_model`: '@rm' names no earlier stage (earlier stages: sft)"),
        ([{**sft_stage(), "model": "dpo"}, dpo_stage()], {},
         "stages[0] (sft): `model` 'dpo' is not an earlier stage (it is the first stage)"),
        ([sft_stage(), {**dpo_stage(), "model": "dpo"}], {},
         "stages[1] (dpo): `model` 'dpo' is not an earlier stage (earlier stages: sft)"),
        ([sft_stage(), {**dpo_stage(), "name": "sft"}], {}, "stages[1] (sft): `name` 'sft' is used twice"),
        ([sft_stage(), dpo_stage(output_dir="runs/pipe/sft/dpo")], {},
         "stages 'sft' and 'dpo' both write to `output_dir` runs/pipe/sft / runs/pipe/sft/dpo"),
        ([{**sft_stage(), "recipe": "recipes/nope.yaml"}], {},
         "stages[0] (sft): `recipe`: file not found: recipes/nope.yaml"),
        ([{**sft_stage(), "stage": "sfft"}], {}, "stages[0] (sft): `stage`: no script scripts/run_sfft.py for stage 'sfft'; did you mean `sft`?"),
        ([{**sft_stage(), "stage": "pipeline"}], {}, "stages[0] (sft): `stage`: scripts/run_pipeline.py runs pipelines; it is not a stage"),
        ([], {}, "pipe.yaml: `stages` must be a non-empty list"),
        ([sft_stage()], {"num_processes": 0}, "`num_processes` must be a positive integer, got 0"),
        ([sft_stage(), {**dpo_stage(), "model": "sft", "overrides": {"model_name_or_path": "x"}}], {},
         "give `model` or `overrides.model_name_or_path`, not both"),
        ([eval_stage()], {}, "stages[0] (eval): an eval stage evaluates earlier stages; it cannot come first"),
        ([sft_stage(), {**eval_stage(), "models": ["sft", "dpo"]}], {},
         "stages[1] (eval): `models`: 'dpo' is not an earlier stage (earlier stages: sft)"),
        ([sft_stage(), eval_stage(promts="x")], {},
         "stages[1] (eval): overrides: unknown key `promts`; did you mean `prompts`?"),
        ([sft_stage(), {**eval_stage(), "recipe": "x.yaml"}], {}, "stages[1] (eval): unknown key `recipe`"),
        ([sft_stage(), eval_stage(output_dir=None)], {}, "stages[1] (eval): `overrides.output_dir` is required"),
        ([sft_stage(), eval_stage(), {**eval_stage(output_dir="runs/pipe/eval2"), "name": "again", "models": ["eval"]}],
         {}, "stages[2] (again): `models`: 'eval' is an eval stage; it writes numbers, not a model"),
        ([sft_stage(), eval_stage(reference="@rm")], {},
         "stages[1] (eval): `overrides.reference`: '@rm' names no earlier stage"),
    ],
)  # fmt: skip
def test_a_bad_pipeline_is_refused_in_one_line(away_from_the_checkout, stages, top, expected):
    path = write_pipeline(away_from_the_checkout, *stages, **top)
    with pytest.raises(RecipeError) as err:
        load_pipeline(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unknown_stage_name_lists_the_stages(away_from_the_checkout):
    pipeline = load_pipeline(write_pipeline(away_from_the_checkout, sft_stage(), dpo_stage()))
    with pytest.raises(RecipeError, match=r"pipe.yaml: --only rm: no such stage; stages: sft, dpo$"):
        plan_pipeline(pipeline, only="rm")
    with pytest.raises(
        RecipeError, match=r"--from dpo: stage 'dpo' reads the output of 'sft', but runs/pipe/sft "
    ):
        plan_pipeline(pipeline, from_stage="dpo")  # sft has not run: dpo would have no model


def test_the_cli_refuses_a_bad_pipeline_with_exit_2(away_from_the_checkout, capsys):
    path = write_pipeline(away_from_the_checkout, {**sft_stage(), "modle": "x"})
    with pytest.raises(SystemExit) as done:
        cli_main(["run", str(path)])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "unknown key `modle`; did you mean `model`?" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as done:
        cli_main(["run", str(path), "--from", "sft", "--only", "sft"])
    assert done.value.code == 2


def test_shipped_pipelines_load_from_any_folder(away_from_the_checkout):
    shipped = sorted(p for p in RECIPES.glob("**/*.yaml") if is_pipeline_file(p))
    assert RECIPES / "tiny" / "pipeline_sft_dpo.yaml" in shipped
    for path in shipped:  # `recipe: recipes/...` is read from the checkout when this folder has none
        assert all(stage.is_eval or Path(stage.recipe).is_file() for stage in load_pipeline(path).stages)
    tiny = load_pipeline(RECIPES / "tiny" / "pipeline_sft_dpo.yaml")
    assert [(s.name, s.output_dir) for s in tiny.stages] == [
        ("sft", "runs/tiny/sft"),
        ("dpo", "runs/tiny/dpo"),
        ("eval", "runs/tiny/eval"),
    ]
    assert tiny.stages[1].overrides == {"model_name_or_path": "runs/tiny/sft"}
    assert tiny.stages[2].inputs == ["sft", "dpo"]


def test_check_folder_checks_a_pipeline_as_a_pipeline(away_from_the_checkout, capsys):
    from alignment.check import check_folder

    folder = away_from_the_checkout / "recipes"
    folder.mkdir()
    write_pipeline(folder, sft_stage(), dpo_stage(), name="good")
    write_pipeline(folder, sft_stage(), {**dpo_stage(), "model": "rm"}, name="bad")
    assert check_folder(str(folder)) == [str(folder / "bad.yaml")]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        f"error  {folder}/bad.yaml: stages[1] (dpo): `model` 'rm' is not an earlier stage"
    )
    assert out[1] == f"ok     {folder}/good.yaml  (pipeline, 2 stages: sft -> dpo)"
    assert out[2] == "1 of 2 recipes dry-run"


# --- Resolution and rerun decisions (no training: finished runs recorded by hand) ------------------------


def test_models_and_references_resolve_to_earlier_outputs(away_from_the_checkout):
    rm = {"name": "rm", "stage": "rm", "recipe": str(TINY_DPO), "overrides": {"output_dir": "runs/pipe/rm"}}
    grpo = {"name": "rl", "stage": "dpo", "recipe": str(TINY_DPO),
            "overrides": {"output_dir": "runs/pipe/rl", "ref_model": "@rm", "tags": ["@sft", "x"]}}  # fmt: skip
    pipeline = load_pipeline(write_pipeline(away_from_the_checkout, sft_stage(), rm, grpo))
    sft, rm, rl = pipeline.stages
    assert "model_name_or_path" not in sft.overrides  # the first stage keeps its recipe's model
    assert rm.overrides["model_name_or_path"] == "runs/pipe/sft"
    # A reward model is not a policy: the next stage's model is still the SFT output; "@rm" is the RM.
    assert rl.overrides["model_name_or_path"] == "runs/pipe/sft"
    assert rl.overrides["ref_model"] == "runs/pipe/rm" and rl.overrides["tags"] == ["runs/pipe/sft", "x"]
    assert rl.inputs == ["sft", "rm"]
    assert pipeline.log_dir == Path("runs/pipe/logs") and pipeline.name == "pipe"


def test_a_stage_recipes_env_block_stays_out_of_the_other_stages(away_from_the_checkout, monkeypatch):
    monkeypatch.delenv("PIPELINE_TEST_PROJECT", raising=False)
    recipe = away_from_the_checkout / "sft.yaml"
    recipe.write_text(TINY_SFT.read_text() + "env:\n  PIPELINE_TEST_PROJECT: sft-only\n")
    load_pipeline(write_pipeline(away_from_the_checkout, {**sft_stage(), "recipe": str(recipe)}, dpo_stage()))
    assert "PIPELINE_TEST_PROJECT" not in os.environ  # the sft script sets it again in its own process


def test_launch_settings_are_pipeline_wide_a_stage_may_override_them(away_from_the_checkout):
    path = write_pipeline(away_from_the_checkout, sft_stage(), {**dpo_stage(), "num_processes": None},
                          num_processes=2)  # fmt: skip
    sft, dpo = plan_pipeline(load_pipeline(path))
    assert sft.command[1:7] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                                str(REPO / "scripts" / "run_sft.py")]  # fmt: skip
    assert dpo.command[1] == str(REPO / "scripts" / "run_dpo.py")  # plain Python: one process
    # A precision the accelerate config disagrees with is refused before any stage runs
    zero2 = write_pipeline(
        away_from_the_checkout, sft_stage(), accelerate_config="accelerate_configs/zero2.yaml"
    )
    with pytest.raises(
        RecipeError, match=r"^stage 'sft': .* sets neither `bf16` nor `fp16` but .*zero2.yaml has"
    ):
        plan_pipeline(load_pipeline(zero2))


def finish(pipeline, *names: str) -> None:
    """Record a stage as a finished pipeline run, as a successful stage script and the runner leave it."""
    for stage in pipeline.stages:
        if stage.name in names:
            write_run_recipe(Path(stage.output_dir), {"stage": stage.stage}, "finished")
            write_marker(pipeline, stage, 1.0)


def test_a_rerun_skips_what_is_unchanged_and_reruns_what_changed_and_after(away_from_the_checkout):
    folder = away_from_the_checkout
    pipeline = load_pipeline(write_pipeline(folder, sft_stage(), dpo_stage()))
    assert actions(plan_pipeline(pipeline)) == [("sft", "run", False), ("dpo", "run", False)]
    finish(pipeline, "sft", "dpo")
    assert actions(plan_pipeline(pipeline)) == [("sft", "skip", False), ("dpo", "skip", False)]

    # dpo changed: only dpo reruns, afresh; sft changed: its hash is in dpo's, so both rerun
    changed_dpo = load_pipeline(write_pipeline(folder, sft_stage(), dpo_stage(beta=0.1)))
    assert actions(plan_pipeline(changed_dpo)) == [("sft", "skip", False), ("dpo", "run", True)]
    changed_sft = load_pipeline(write_pipeline(folder, sft_stage(learning_rate=1e-3), dpo_stage()))
    assert actions(plan_pipeline(changed_sft)) == [("sft", "run", True), ("dpo", "run", True)]
    assert changed_sft.stages[1].values == pipeline.stages[1].values  # same recipe, another input model

    # --from / --only: the named stage (and, for --from, every later one) afresh, nothing before it
    for option in ({"from_stage": "dpo"}, {"only": "dpo"}):
        plans = plan_pipeline(pipeline, **option)
        assert actions(plans) == [("dpo", "run", True)]
        assert plans[0].command[-2:] == ["--overwrite_output_dir", "true"]
    assert actions(plan_pipeline(pipeline, from_stage="sft")) == [("sft", "run", True), ("dpo", "run", True)]
    assert actions(plan_pipeline(pipeline, only="sft")) == [("sft", "run", True)]

    # A crash mid-stage leaves no marker: the stage resumes its own run (no overwrite)
    (Path("runs/pipe/dpo") / MARKER).unlink()
    write_run_recipe(Path("runs/pipe/dpo"), {"stage": "dpo"}, "running")
    assert actions(plan_pipeline(pipeline)) == [("sft", "skip", False), ("dpo", "run", False)]


def test_dry_run_prints_commands_and_runs_nothing(away_from_the_checkout, capsys):
    path = write_pipeline(away_from_the_checkout, sft_stage(), {**dpo_stage(), "model": "sft"})
    with pytest.raises(SystemExit) as done:
        cli_main(["run", str(path), "--dry_run"])
    assert done.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "[1/2] sft: would run (not run by a pipeline yet)"
    assert out[3] == "[2/2] dpo: would run (not run by a pipeline yet)"
    assert out[4].startswith("    python ") and "run_dpo.py" in out[4]
    assert "--model_name_or_path runs/pipe/sft --max_steps 3" in out[4]
    assert not Path("runs").exists()


def test_overrides_reach_the_recipe_parser_as_written(away_from_the_checkout):
    from alignment.recipe import parse_recipe

    args = to_cli({"loss_type": ["sigmoid", "sft"], "beta": 0.25, "activation_checkpointing": False,
                   "max_length": None, "model_init_kwargs": {"dtype": "float32"}})  # fmt: skip
    assert args[:3] == ["--loss_type", "sigmoid", "sft"]
    training = parse_recipe("dpo", [str(TINY_DPO), *args]).training
    assert training.loss_type == ["sigmoid", "sft"] and training.beta == 0.25
    assert training.activation_checkpointing is False and training.max_length is None
    assert training.model_init_kwargs == {"dtype": "float32"}


# --- Real runs: SFT then DPO, each in its own process ------------------------------------------------------


@pytest.mark.slow
def test_pipeline_runs_skips_reruns_and_stops_at_a_failure(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    path = write_pipeline(workdir, sft_stage(), dpo_stage(), eval_stage(pairs="data/tiny/dpo"))
    ended = []
    outcomes = run_pipeline(path, on_stage_end=ended.append)  # three stage processes
    assert [(o.name, o.status) for o in outcomes] == [("sft", "ran"), ("dpo", "ran"), ("eval", "ran")]
    assert ended == outcomes and outcomes[1].log == "runs/pipe/logs/dpo.log"
    # the eval stage: each stage's model scored in its own eval/ folder, and compared under its output_dir
    compared = json.loads(Path("runs/pipe/eval/results.json").read_text())
    assert list(compared) == ["sft", "dpo"]
    for name in ("sft", "dpo"):
        own = json.loads(Path(f"runs/pipe/{name}/eval/results.json").read_text())
        assert compared[name]["tasks"]["exact_match"]["all"] == own["tasks"]["exact_match"]["all"]
        assert own["tasks"]["exact_match"]["rows"] == 10
    assert compared["dpo"]["tasks"]["preference"]["rows"] == 10  # the dpo folder's test split, first 10
    assert Path("runs/pipe/eval/results.md").read_text().startswith("| model | preference/all |")
    dpo_run = read_run_recipe(Path("runs/pipe/dpo"))
    assert dpo_run["status"] == "finished"
    assert dpo_run["values"]["model_name_or_path"] == "runs/pipe/sft"  # not the recipe's runs/tiny/sft
    pipeline = load_pipeline(path)
    for stage in pipeline.stages:
        marker = json.loads((Path(stage.output_dir) / MARKER).read_text())
        assert marker["hash"] == stage.hash and marker["stage"] == stage.name
    assert json.loads(Path("runs/pipe/dpo", MARKER).read_text())["inputs"] == {"sft": pipeline.stages[0].hash}
    out = capsys.readouterr().out
    assert "[2/3] dpo: python " in out and "--model_name_or_path runs/pipe/sft" in out
    assert "(log: runs/pipe/logs/dpo.log)" in out

    # Rerun: all finished and unchanged, nothing launched
    assert [o.status for o in run_pipeline(path)] == ["skipped", "skipped", "skipped"]
    assert "[1/3] skip sft (finished, unchanged: runs/pipe/sft)" in capsys.readouterr().out

    # dpo's overrides changed: sft skipped, dpo trains afresh over its previous run (one stage process)
    changed = write_pipeline(workdir, sft_stage(), dpo_stage(beta=0.1, max_steps=2), name="changed",
                             log_dir="runs/pipe/logs")  # fmt: skip
    with pytest.raises(SystemExit) as done:
        cli_main(["run", str(changed)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "skip sft" in out and "--overwrite_output_dir true" in out
    assert read_run_recipe(Path("runs/pipe/dpo"))["values"]["beta"] == 0.1
    assert json.loads(Path("runs/pipe/dpo/trainer_state.json").read_text())["global_step"] == 2

    # A stage its script refuses: the pipeline stops there, naming the stage and its log; dpo does not run
    dpo_log = Path("runs/pipe/logs/dpo.log").read_text()
    failing = write_pipeline(
        workdir, sft_stage(learning_rate="fast"), dpo_stage(beta=0.1, max_steps=2), name="failing",
        log_dir="runs/pipe/logs",
    )  # fmt: skip
    with pytest.raises(SystemExit) as done:
        cli_main(["run", str(failing)])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: pipeline stage 'sft' failed (exit 2); log: runs/pipe/logs/sft.log\n")
    assert "learning_rate" in err.split("last lines of runs/pipe/logs/sft.log:\n")[1]
    assert Path("runs/pipe/logs/dpo.log").read_text() == dpo_log
    # The refused run deleted nothing: the previous pipeline is still finished and unchanged
    assert actions(plan_pipeline(load_pipeline(changed))) == [("sft", "skip", False), ("dpo", "skip", False)]
