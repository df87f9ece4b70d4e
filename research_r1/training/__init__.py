"""Training: a recipe (`configs`) launched under accelerate (`launch`, checked first by
`dry_run` and `memory`) runs `train`, whose trainer plays episodes through `trl_rollout`, saves
and pushes checkpoints (`callbacks`) and publishes the model with its card (`publish`);
`reduced` runs any recipe at reduced shape on a CPU."""
