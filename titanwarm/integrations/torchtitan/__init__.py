"""titanwarm inside a torchtitan (<= 0.2.2, TOML-config) fork: see docs/torchtitan.md.

- ``titanwarm.integrations.torchtitan.config``: for ``[job] custom_config_module``; adds the
  ``[depth_schedule]`` and ``[curvature]`` sections (titanwarm's own dataclasses).
- ``titanwarm.integrations.torchtitan.register``: for ``[experimental] custom_import``; registers
  ``llama3_titanwarm`` (torchtitan's Llama 3 TrainSpec with wrapped builders).
- ``titanwarm.integrations.torchtitan.adapter``: the pieces themselves (``TitanwarmAdapter``,
  ``wrap_train_spec``, ``titanwarm_states``).

Importing this package does not import torchtitan (``config`` needs only the dataclasses).
"""
