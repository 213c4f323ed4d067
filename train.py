"""Train a model from a TOML config: ``[torchrun ...] train.py --config FILE [--section.key value]``."""

from titanwarm.cli import exit_after_run, main

if __name__ == "__main__":
    exit_after_run(main())
