"""titanwarm inside a torchtitan fork: see docs/torchtitan.md.

One shared core and one thin glue layer per torchtitan generation, chosen by the features the
installed torchtitan has (``features.py``), not by its version string:

- core (no torchtitan import): ``adapter`` (``TitanwarmAdapter``: locks, schedule, tracker, step
  post-hook), ``skipping`` (locked blocks left out of the forward), ``attention`` (math SDPA for
  the tracker), ``optimizer_state`` (the container's state dict with locked blocks),
  ``checkpoint_states`` (``titanwarm_states``: Stateful lock and tracker state), ``metrics``;
- torchtitan 0.2.x (TOML): ``config`` (``[job] custom_config_module``), ``register``
  (``[experimental] custom_import``), ``train_spec`` (``wrap_train_spec``);
- torchtitan 0.3.x (Python configs): ``trainer`` (``TitanwarmTrainer``, ``TitanwarmMixin``,
  ``with_titanwarm``), ``recipes`` (``--module titanwarm.integrations.torchtitan.recipes``).

Importing this package imports no torchtitan.
"""
