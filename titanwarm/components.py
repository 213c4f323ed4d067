"""Imports every built-in component module so that its registrations take effect."""

import titanwarm.data  # noqa: F401  (datasets)
import titanwarm.models.llama3  # noqa: F401  (model "llama3")
import titanwarm.optim  # noqa: F401  (optimizers, LR schedules)
import titanwarm.tokenizers  # noqa: F401  (tokenizer formats)
