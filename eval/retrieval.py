"""Retrieval recall@1/5/10 both ways: `python eval/retrieval.py --ckpt RUN_OR_EXPORT_DIR [--split test] [--json OUT]`."""

import argparse
import sys

from mmd2v2.cli import add_eval_arguments, guarded, run_eval

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_eval_arguments(parser)
    sys.exit(guarded(run_eval, parser.parse_args()))
