"""Process groups, device meshes, parallelisation (TP, activation checkpointing, compile, FSDP2),
layout-independent parameter init and DTensor-aware helpers."""
