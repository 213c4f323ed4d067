"""``python -m titanwarm.export_hf --checkpoint DUMP/checkpoint/step-N --output DIR``: a titanwarm
checkpoint as a Hugging Face Llama folder (see ``titanwarm.hf.export``)."""

import sys

from titanwarm.hf.export import main

if __name__ == "__main__":
    sys.exit(main())
