"""Convert a fairseq Data2Vec 2.0 checkpoint (image or text) into a Hugging Face folder mmd2v2's encoders load.

    python scripts/convert_d2v2.py --checkpoint base_imagenet.pt --modality image --out checkpoints/d2v2_image_base
    python scripts/convert_d2v2.py --checkpoint nlp_base.pt --modality text --tokenizer roberta-base \
        --out checkpoints/d2v2_text_base

Use them as `model.image: {family: data2vec2-vision, pretrained: checkpoints/d2v2_image_base}` and
`model.text: {family: data2vec-text, pretrained: checkpoints/d2v2_text_base}`. The checkpoint is read without
running pickled code (mmd2v2.models.checkpoint_reader); the student weights are converted, the EMA teacher dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.models.checkpoint_reader import read_checkpoint  # noqa: E402
from mmd2v2.models.convert_d2v2 import (  # noqa: E402
    available_modalities,
    convert_image,
    convert_text,
    model_state,
    write_image_folder,
    write_text_folder,
)


def main(argv: list[str] | None = None) -> int:
    """Convert and write the folder; returns the exit code (2 with a one-line error on bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="fairseq data2vec 2.0 .pt (or a .safetensors state dict)"
    )
    parser.add_argument("--out", type=Path, required=True, help="HF folder to write")
    parser.add_argument(
        "--modality", choices=("image", "text"), help="which encoder to convert (default: the only one)"
    )
    parser.add_argument("--tokenizer", help="text: a RoBERTa tokenizer folder or hub id, saved into the folder")
    parser.add_argument("--num-heads", type=int, help="attention heads, when the checkpoint carries no config")
    args = parser.parse_args(argv)
    try:
        checkpoint = read_checkpoint(args.checkpoint)
        found = available_modalities(model_state(checkpoint))
        modality = args.modality or (found[0] if len(found) == 1 else None)
        if modality not in found:
            raise ValueError(
                f"--modality: the checkpoint holds {' and '.join(found) or 'no'} encoders, "
                f"{'choose one' if modality is None else f'not {modality}'}"
            )
        if modality == "image":
            config, state = convert_image(checkpoint, args.num_heads)
            write_image_folder(config, state, args.out)
            shape = f"image {config.image_size}, patch {config.patch_size}"
        else:
            if args.tokenizer is None:
                raise ValueError(
                    "--tokenizer: required for text (the RoBERTa tokenizer whose ids the checkpoint embeds)"
                )
            config, state = convert_text(checkpoint, args.num_heads)
            write_text_folder(config, state, args.out, args.tokenizer)
            shape = f"vocabulary {config.vocab_size}"
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: data2vec 2.0 {modality}, {config.num_hidden_layers} blocks, width {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {shape}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
