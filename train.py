"""Train a model from a TOML config: ``[torchrun ...] train.py --config FILE [--section.key value]``."""

import sys

from titanwarm.cli import main

if __name__ == "__main__":
    sys.exit(main())
