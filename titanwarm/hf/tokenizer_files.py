"""Tokenizer files of an exported Hugging Face folder, from a Llama 3 tiktoken ranks file.

Always: ``original/tokenizer.model`` (the ranks file, as Meta's Llama 3 repositories ship it). With
``transformers`` installed: ``tokenizer.json`` + ``tokenizer_config.json`` for
``AutoTokenizer.from_pretrained`` — transformers' own ``TikTokenConverter`` turns the ranks into a
byte-level BPE with Llama 3's split pattern and special tokens, and a template post-processor adds
``<|begin_of_text|>`` as Llama 3's tokenizer does. Without transformers the export says what is
missing and how to get it. A sentencepiece tokenizer is not converted (a message says so).
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

from titanwarm.hf.convert import HFError
from titanwarm.tokenizers import load_tokenizer
from titanwarm.tokenizers.tiktoken_format import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, TiktokenTokenizer


def write_tokenizer_files(path: str, output: Path, vocab_size: int) -> tuple[int | None, int | None, list[Path]]:
    """Write the tokenizer files for tokenizer file ``path`` into ``output``; returns (bos id, eos
    id, files written). HFError when the tokenizer's vocabulary is not the model's."""
    tok = load_tokenizer(path)
    if tok.vocab_size != vocab_size:
        raise HFError(f"tokenizer {path} has {tok.vocab_size} tokens, the checkpoint's model {vocab_size}: "
                      "not the tokenizer this model was trained with")
    if not isinstance(tok, TiktokenTokenizer):
        print(f"note: {path} is not a tiktoken file: no tokenizer files written (only Llama 3 "
              "tiktoken tokenizers are converted)")
        return tok.bos_id, tok.eos_id, []
    (output / "original").mkdir(exist_ok=True)
    files = [Path(shutil.copyfile(path, output / "original" / "tokenizer.model"))]
    try:
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        print("note: tokenizer.json not written: converting the tiktoken file needs transformers "
              "(pip install transformers); original/tokenizer.model is there")
        return tok.bos_id, tok.eos_id, files
    # transformers >= 5 names the argument extra_special_tokens, 4.x additional_special_tokens
    key = ("extra_special_tokens" if "extra_special_tokens" in inspect.signature(TikTokenConverter).parameters
           else "additional_special_tokens")
    backend = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN,
                                **{key: list(LLAMA3_SPECIAL_TOKENS)}).converted()
    bos, eos = LLAMA3_SPECIAL_TOKENS[0], LLAMA3_SPECIAL_TOKENS[1]
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.bos_id)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos,
                                   model_input_names=["input_ids", "attention_mask"])
    written = fast.save_pretrained(str(output))
    config = output / "tokenizer_config.json"  # the class name every transformers version knows
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    files += [Path(f) for f in written if Path(f).is_file() and Path(f).parent == output]
    return tok.bos_id, tok.eos_id, files
