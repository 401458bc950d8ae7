"""Named method presets (rows of the MAD paper's Table S3): config overrides on the distillation switches."""

from __future__ import annotations

from mmd2v2.errors import UserError

OFF = [
    "distill.vision=false",
    "distill.text=false",
    "distill.token_selection=none",
    "distill.confidence_weighting=false",
    "adaptive.enabled=false",
]
MD = ["distill.vision=true", "distill.text=true"]

METHODS: dict[str, list[str]] = {
    "baseline": OFF,  # task loss only
    "unimodal_v": [*OFF, "distill.vision=true"],  # distil the vision teacher only
    "md": [*OFF, *MD],  # multimodal distillation
    "md_ts": [*OFF, *MD, "distill.token_selection=adaptive"],  # + token selection
    "md_ts_random": [*OFF, *MD, "distill.token_selection=random"],  # + random selection (no language prior)
    "md_ts_cw": [*OFF, *MD, "distill.token_selection=adaptive", "distill.confidence_weighting=true"],  # + CW
    "af_no_distill": [*OFF, "adaptive.enabled=true", "adaptive.distill=false"],  # 2nd-stage 'pretraining' only
    "mad": [
        *OFF,
        *MD,
        "distill.token_selection=adaptive",
        "distill.confidence_weighting=true",
        "adaptive.enabled=true",
        "adaptive.distill=true",
    ],  # MAD: TS + CW + AF
}


def method_overrides(name: str) -> list[str]:
    """The overrides of a method preset."""
    if name not in METHODS:
        raise UserError(f"protocol.methods: unknown method '{name}' (expected one of: {', '.join(METHODS)})")
    return METHODS[name]
