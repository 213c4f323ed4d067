"""Hugging Face Llama checkpoints in and out (safetensors + config.json).

``convert.py``: the name map, the RoPE row permutation and config.json, both ways (pure functions);
``export.py``: a DCP checkpoint of any layout -> an HF folder (``python -m titanwarm.export_hf``);
``load.py``: an HF folder -> the (parallelized) model of a run;
``warm_start.py``: the trainer's ``[checkpoint] initial_load_path`` hook and load-time check;
``tokenizer_files.py``: the tokenizer files of an exported folder.
"""
