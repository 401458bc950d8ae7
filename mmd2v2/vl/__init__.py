"""VL task finetuning with Multimodal (Adaptive) Distillation: VQA v2, SNLI-VE, VCR, their protocols and a demo task."""
