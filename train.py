"""Train MM-D2V2: `deepspeed train.py --config configs/demo.yaml` or `python train.py --config ... --output-dir DIR`."""

import argparse
import sys

from mmd2v2.cli import add_train_arguments, guarded, run_train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_train_arguments(parser)
    sys.exit(guarded(run_train, parser.parse_args()))
