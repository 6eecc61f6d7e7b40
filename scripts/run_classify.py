"""Text classification: a score head with an output per label, trained on `text`/`label` rows.

    python scripts/run_classify.py recipes/tiny/classify/config.yaml   # CPU, after `alignment tiny build`
    accelerate launch --config_file accelerate_configs/ddp.yaml scripts/run_classify.py RECIPE

TRL has no classification trainer: this stage runs transformers' Trainer (alignment/classification.py).
Any recipe key can be overridden as `--key value`; `--dry_run` validates and prints the plan.
"""

from alignment.recipe import exit_on_recipe_error, parse_recipe


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    recipe = parse_recipe("classify", argv)
    if recipe.dry_run:
        from alignment.check import print_plan

        print_plan(recipe)
        return

    from alignment.data.prepare import prepare_data
    from alignment.model import load_tokenizer
    from alignment.reruns import start_run
    from alignment.trainers import build_trainer
    from alignment.training import finish_training

    run = start_run(recipe)  # resume the recorded run, refuse a changed one, or stop: already finished
    if run.finished:
        return

    # Tokenizer, then the data (converted, checked, curated, measured with it), then the model and trainer
    tokenizer = load_tokenizer(recipe)
    datasets, data_report = prepare_data(recipe, tokenizer)
    trainer = build_trainer(recipe, tokenizer, datasets)  # the labels checked, then a head per class

    # Training, then save, evaluate (confusion matrix: JSON and PNG in output_dir), card, push
    result = trainer.train(resume_from_checkpoint=run.checkpoint)
    finish_training(trainer, recipe, result, datasets, data_report, resumed=run.checkpoint is not None)


if __name__ == "__main__":
    main()
