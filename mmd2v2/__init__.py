"""mmd2v2: image-text retrieval from pretrained unimodal encoders (MM-D2V2)."""

__version__ = "0.1.0"
