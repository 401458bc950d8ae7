"""Self-supervised unimodal pretraining (data2vec 2.0) that writes Hugging Face folders the encoders load."""
