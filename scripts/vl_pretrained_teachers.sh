#!/usr/bin/env bash
# The VL demo protocols (VQA, SNLI-VE, VCR) with teachers that know more than the student (docs/vl.md,
# "Teachers that know more"): the student is a retrieval export trained on 300 paired images from the pretrained
# demo encoders; the vision teacher is the pretrained 6-block demo image model (BEiT-2's role), the text teacher
# the pretrained demo text model; confidence weighting keeps the full retrieval demo export. Made-once steps
# (pretraining, demo data) are reused; a protocol run again into its folder goes on where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for name in image text teacher; do mmd2v2 pretrain --config "configs/pretrain_demo_$name.yaml"; done
[ -f runs/demo/export/model.safetensors ] || python train.py --config configs/demo.yaml --output-dir runs/demo
[ -f runs/demo_pretrained_n300/export/model.safetensors ] || python train.py --config configs/demo_pretrained.yaml \
    --output-dir runs/demo_pretrained_n300 data.demo_num_train=300 data.demo_dir=data/demo_n300
[ -d runs/vl_demo_data/images ] || mmd2v2 vl demo-data runs/vl_demo_data
for task in ${TASKS:-vqa snli_ve vcr}; do
    mmd2v2 vl protocol --config "configs/vl_demo_$task.yaml" --output-dir "runs/vl_pretrained_teachers_$task" \
        student.init_from=runs/demo_pretrained_n300/export \
        teachers.vision.kind=hf teachers.vision.family=data2vec2-vision \
        teachers.vision.pretrained=data/pretrained/demo_teacher/model \
        teachers.text.kind=hf teachers.text.family=data2vec-text teachers.text.pretrained=data/pretrained/demo_text/model \
        "protocol.settings=[low_shot, full]"
done
