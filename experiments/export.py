"""Export a checkpoint for use outside this project: transformers' SmolVLM classes, or with its own code.

    python -m experiments.export runs/tiny/checkpoints/best out/tiny-smolvlm --format smolvlm
    python -m experiments.export CKPT OUT --format remote                     # any encoder x LM, trust_remote_code
    python -m experiments.export OLD_CKPT NEW_CKPT --format nanovlm            # convert an older checkpoint
    python -m experiments.export CKPT OUT --format smolvlm --dtype bfloat16   # checked in fp32, stored in bf16

- smolvlm: SigLIP / SigLIP2 (fixed resolution) vision + SmolLM2 (Llama) or Gemma 3 text, as transformers'
  own `SmolVLMForConditionalGeneration` + `SmolVLMProcessor`: loads with transformers alone.
- remote: every combination (DINOv2 / DINOv3 too), our transformers classes copied into the checkpoint:
  `AutoModelForImageTextToText.from_pretrained(OUT, trust_remote_code=True)`, no project needed.
- nanovlm: the project's own layout, re-saved (checkpoints from before the Auto classes).
What a format cannot represent exactly is refused before anything is written, and an export is kept
only when its logits match the checkpoint's (see nanovlm/export/). Bad input: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nanovlm.export import FORMATS, UnsupportedExport, check_exportable, export_checkpoint
from nanovlm.export.smolvlm import REFUSED_FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("checkpoint", help="a checkpoint directory (VisionLanguageModel.save_pretrained layout)")
    parser.add_argument("out", help="the directory to write (must not exist unless --overwrite)")
    parser.add_argument("--format", default="smolvlm", help=f"one of: {', '.join(FORMATS)} "
                        f"(refused: {', '.join(REFUSED_FORMATS)})")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights' dtype on disk (the logits check runs in float32 first)")
    parser.add_argument("--atol", type=float, default=None,
                        help="largest logit difference accepted, float32 (default: 1e-3 smolvlm, 1e-4 remote)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if Path(args.out).exists() and not args.overwrite:
            raise UnsupportedExport(f"{args.out} exists; pass --overwrite to replace it")
        check_exportable(args.checkpoint, args.format)
        out = export_checkpoint(args.checkpoint, args.out, args.format, atol=args.atol, dtype=args.dtype)
    except (UnsupportedExport, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    how = {"remote": ", trust_remote_code=True", "nanovlm": ") after `import nanovlm` ("}.get(args.format, "")
    print(f"exported {args.checkpoint} -> {out} ({args.format}); load it with "
          f"AutoModelForImageTextToText.from_pretrained({str(out)!r}{how}) and AutoProcessor the same way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
