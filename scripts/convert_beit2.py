"""Convert a BEiT / BEiT-2 checkpoint in timm's or unilm's layout into a Hugging Face BeitModel folder.

    python scripts/convert_beit2.py --checkpoint beitv2_base_patch16_224_pt1k.pth --out checkpoints/beitv2_base_patch16_224

The checkpoint is read without running pickled code (mmd2v2.models.checkpoint_reader), or from safetensors.
Use the folder as the teacher: `teacher: {family: beit, pretrained: checkpoints/beitv2_base_patch16_224}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.models.checkpoint_reader import read_checkpoint  # noqa: E402
from mmd2v2.models.convert_beit import convert_beit_state, write_beit_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Convert and write the folder; returns the exit code (2 with a one-line error on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help=".pth/.pt (timm or unilm) or .safetensors")
    parser.add_argument("--out", type=Path, required=True, help="HF folder to write")
    parser.add_argument("--image-size", type=int, default=224, help="resolution the checkpoint was trained at")
    args = parser.parse_args(argv)
    try:
        config, state = convert_beit_state(read_checkpoint(args.checkpoint), args.image_size)
        write_beit_folder(config, state, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: BEiT {config['num_hidden_layers']} blocks, width {config['hidden_size']}, "
        f"{config['num_attention_heads']} heads, patch {config['patch_size']}, image {config['image_size']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
