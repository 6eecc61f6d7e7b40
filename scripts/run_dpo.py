"""Direct preference optimisation (and its loss variants, via `loss_type`) from a recipe.

    accelerate launch --config_file accelerate_configs/zero3.yaml scripts/run_dpo.py \
        recipes/zephyr-7b-beta/dpo/config_full.yaml
    python scripts/run_dpo.py recipes/tiny/dpo/config.yaml --loss_type ipo   # CPU, after the tiny SFT run

Any recipe key can be overridden as `--key value`; `--dry_run` validates and prints the plan.
"""

from alignment.recipe import exit_on_recipe_error, parse_recipe


@exit_on_recipe_error
def main(argv: list[str] | None = None) -> None:
    recipe = parse_recipe("dpo", argv)
    if recipe.dry_run:
        from alignment.check import print_plan

        print_plan(recipe)
        return

    from trl import DPOTrainer

    from alignment.callbacks import stage_callbacks
    from alignment.data.prepare import prepare_data
    from alignment.logs import setup_logging
    from alignment.model import load_model, load_reference_model, load_tokenizer, peft_config_for
    from alignment.reruns import begin_run
    from alignment.training import finish_training

    setup_logging(recipe.training)
    run = begin_run(recipe)  # resume the recorded run, refuse a changed one, or stop: already finished
    if run.finished:
        return

    # Tokenizer, then the data (converted, checked, curated, measured with it), then policy and reference
    tokenizer = load_tokenizer(recipe)
    datasets, data_report = prepare_data(recipe, tokenizer)
    model = load_model(recipe, tokenizer)
    reference = load_reference_model(recipe, tokenizer)

    # Training
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=recipe.training,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config_for(recipe, model),
        callbacks=stage_callbacks(),
    )
    result = trainer.train(resume_from_checkpoint=run.checkpoint)

    # Save, evaluate, card, push
    finish_training(trainer, recipe, result, datasets, data_report, resumed=run.checkpoint is not None)


if __name__ == "__main__":
    main()
