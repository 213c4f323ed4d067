"""``[experimental] custom_import = "titanwarm.integrations.torchtitan.register"`` (torchtitan 0.2.x).

Registers ``llama3_titanwarm``: torchtitan's own Llama 3 TrainSpec (model class, flavors,
parallelize, dataloader, ...) with its optimizer, loss and metrics builders wrapped by
:func:`titanwarm.integrations.torchtitan.train_spec.wrap_train_spec`. Select it with
``[model] name = "llama3_titanwarm"``. A fork with its own TrainSpec calls
``register_train_spec("my_model_titanwarm", wrap_train_spec(my_spec))`` instead. On a torchtitan
without the TrainSpec registry (0.3.x) importing this module raises one line naming the 0.3 way.
"""

from titanwarm.integrations.torchtitan.features import require

require("train_spec")

from torchtitan.protocols.train_spec import get_train_spec, register_train_spec  # noqa: E402

from titanwarm.integrations.torchtitan.train_spec import wrap_train_spec  # noqa: E402

NAME = "llama3_titanwarm"


def register(name: str = NAME, base: str = "llama3") -> None:
    """Register ``name`` as ``base``'s TrainSpec with titanwarm's builders (idempotent)."""
    try:
        register_train_spec(name, wrap_train_spec(get_train_spec(base)))
    except ValueError:  # already registered (module imported twice under different names)
        pass


register()
