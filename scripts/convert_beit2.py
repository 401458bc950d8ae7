"""Convert a BEiT / BEiT-2 checkpoint in timm's or unilm's layout into a Hugging Face BeitModel folder.

    python scripts/convert_beit2.py --checkpoint beitv2_base_patch16_224_pt1k.pth --out checkpoints/beitv2_base_patch16_224

The checkpoint is read without unpickling arbitrary objects (`torch.load(weights_only=True)`, or safetensors).
Use the folder as the teacher: `teacher: {family: beit, pretrained: checkpoints/beitv2_base_patch16_224}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.models.convert_beit import convert_beit_state, write_beit_folder  # noqa: E402


def read_checkpoint(path: Path) -> dict[str, object]:
    """A .safetensors file or a torch checkpoint, loaded without arbitrary unpickling."""
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint: '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling refusal becomes one line
        raise ValueError(f"--checkpoint: '{path}' cannot be read as plain tensors ({str(error).splitlines()[0][:160]})") from None


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
    print(f"wrote {args.out}: BEiT {config['num_hidden_layers']} blocks, width {config['hidden_size']}, "
          f"{config['num_attention_heads']} heads, patch {config['patch_size']}, image {config['image_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
