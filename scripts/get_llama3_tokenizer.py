"""Fetch Meta's Llama 3 tokenizer (tiktoken BPE ranks, 128,256 tokens) for the 1B/3B/8B presets.

The file is not committed to this repository: this command downloads the ``llama-models`` wheel
from PyPI (``pip download``, no dependencies) and extracts ``llama_models/llama3/tokenizer.model``
from it, then checks that it loads with the Llama 3 vocabulary and special tokens.

    python scripts/get_llama3_tokenizer.py                      # -> tokenizer/llama3/tokenizer.model
    python scripts/get_llama3_tokenizer.py --out PATH [--version 0.3.0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tokenizer" / "llama3" / "tokenizer.model"
MEMBER = "llama_models/llama3/tokenizer.model"


def fetch(out: Path, version: str = "0.3.0") -> Path:
    """Download llama-models==``version`` and write its Llama 3 tokenizer.model to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        f"llama-models=={version}", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("llama_models-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEMBER)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--version", default="0.3.0", help="llama-models release to take it from")
    a = parser.parse_args()
    path = fetch(a.out, a.version)
    from titanwarm.tokenizers import load_tokenizer

    tok = load_tokenizer(str(path))
    if (tok.vocab_size, tok.bos_id, tok.eos_id) != (128_256, 128_000, 128_001):
        sys.exit(f"{path}: unexpected tokenizer (vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id})")
    print(f"wrote {path} (Llama 3 tokenizer, vocab {tok.vocab_size})")


if __name__ == "__main__":
    main()
