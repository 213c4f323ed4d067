"""Llama 3 model family, registered in ``MODELS`` as "llama3"."""

from titanwarm.distributed.parallelize import parallelize_llama
from titanwarm.models.llama3.args import FLAVORS, ModelArgs, RopeScaling
from titanwarm.models.llama3.model import Transformer
from titanwarm.models.llama3.spec import ModelSpec
from titanwarm.registry import MODELS

MODELS.add("llama3", ModelSpec(name="llama3", cls=Transformer, flavors=FLAVORS,
                               parallelize_fn=parallelize_llama))

__all__ = ["FLAVORS", "ModelArgs", "ModelSpec", "RopeScaling", "Transformer"]
