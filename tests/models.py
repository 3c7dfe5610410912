"""Build the stand-in models: ``python -m tests.models {tiny,full} DIR`` prints the image and text folders.

The folders load with ``SentenceTransformer(folder)`` like the real models; see ``pipelines.standin_models``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build (or reuse) both stand-ins, print their paths, one a line."""
    parser = argparse.ArgumentParser(prog="python -m tests.models", description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=("tiny", "full"), help="tiny for tests, full (ViT-B/32 shapes) for benchmarks")
    parser.add_argument("directory", help="folder to write image/ and text/ into; complete ones are reused")
    args = parser.parse_args(argv)

    # Nothing here needs a model hub; make any accidental lookup fail at once instead of waiting on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Imported here, after the environment is set, because huggingface_hub reads it at import time.
    from pipelines.standin_models import build_models

    image_path, text_path = build_models(args.directory, args.size)
    print(image_path)
    print(text_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
