"""`mmd2v2 vl protocol`: zero-shot, low-shot (several seeds) and full-data runs of several methods, as one table.

Writes protocol.json (every run's metrics) and protocol.md (mean and variance of the task's main metric over
seeds, one row per method, one column per setting), each to a temporary name first.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from mmd2v2.models.pretrained import load_pretrained
from mmd2v2.vl.batches import BatchCollator
from mmd2v2.config import config_to_dict
from mmd2v2.files import write_text_atomic
from mmd2v2.vl.config import VLConfig, same_run_settings, vl_config_from_dict
from mmd2v2.vl.methods import method_overrides
from mmd2v2.vl.sampling import low_shot_subset
from mmd2v2.vl.student import export_folder
from mmd2v2.vl.tasks import MAIN_METRIC, TaskData, load_task
from mmd2v2.vl.teachers import DualEncoderTeacher
from mmd2v2.vl.train import train_vl
from mmd2v2.vl.zero_shot import ZeroShotScorer, zero_shot_evaluate


def _zero_shot_model(cfg: VLConfig) -> str | None:
    if cfg.protocol.zero_shot_model:
        return cfg.protocol.zero_shot_model
    for spec in (cfg.teachers.vision, cfg.teachers.text):
        if spec.kind == "mmd2v2" and spec.pretrained:
            return spec.pretrained
    return cfg.student.init_from


def run_zero_shot(cfg: VLConfig, task: TaskData) -> dict[str, float]:
    """The zero-shot protocol of the dual encoder on the validation split (VCR and SNLI-VE)."""
    folder = _zero_shot_model(cfg)
    if folder is None:
        raise ValueError("protocol.zero_shot_model: zero-shot needs an mmd2v2 export (or an mmd2v2 teacher)")
    bundle = load_pretrained(export_folder(folder))
    dual = DualEncoderTeacher(bundle, bundle.preprocess, cfg.task.max_text_length)
    scorer = ZeroShotScorer(dual, task, cfg.teachers.zero_shot_logit_scale)
    collator = BatchCollator(bundle.tokenizer, cfg.task.max_text_length)
    return zero_shot_evaluate(scorer, task.val.examples, bundle.preprocess, collator, cfg.trainer.eval_batch_size,
                              cfg.trainer.progress_bar, cfg.trainer.num_workers)


def with_overrides(cfg: VLConfig, overrides: list[str]) -> VLConfig:
    """`cfg` with `key=value` overrides applied."""
    return vl_config_from_dict(config_to_dict(cfg), overrides)


def summarise(values: list[float]) -> dict[str, float]:
    """Mean and (sample) variance of a setting's per-seed values (variance 0 for one value)."""
    return {"mean": statistics.fmean(values), "var": statistics.variance(values) if len(values) > 1 else 0.0,
            "n": float(len(values))}


def format_table(task: str, results: dict[str, dict[str, dict[str, float]]], columns: list[str]) -> str:
    """Markdown table: rows = methods, columns = settings, cells = mean (variance) over seeds."""
    lines = [f"| method | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for method, row in results.items():
        cells = []
        for column in columns:
            cell = row.get(column)
            cells.append("–" if cell is None else f"{cell['mean']:.2f} ({cell['var']:.2f}, n={int(cell['n'])})")
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return f"{task} {MAIN_METRIC[task]} (%), mean (variance, seeds) on the validation split\n\n" + "\n".join(lines) + "\n"


def finished_run(folder: Path, cfg: VLConfig) -> dict[str, Any] | None:
    """The metrics of a run that finished in `folder` with the settings of `cfg`, else None."""
    metrics = folder / "metrics.json"
    if not (metrics.is_file() and same_run_settings(folder / "config.yaml", cfg)):
        return None
    try:
        return json.loads(metrics.read_text())
    except json.JSONDecodeError:
        return None


def run_protocol(cfg: VLConfig, output_dir: str | Path, reuse: bool = True) -> dict[str, Any]:
    """Run the configured settings x methods x seeds; write protocol.json and protocol.md into `output_dir`.
    With `reuse`, a run that already finished in `output_dir/runs/` with the same settings is not trained again."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(cfg.task)
    main = MAIN_METRIC[task.name]
    runs: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, float]]] = {}
    columns: list[str] = []
    if "zero_shot" in cfg.protocol.settings and task.name != "vqa":
        metrics = run_zero_shot(cfg, task)
        runs.append({"setting": "zero_shot", "method": "dual_encoder", "seed": None, "metrics": metrics})
        results.setdefault("zero-shot (dual encoder)", {})["zero-shot"] = summarise([metrics[main]])
        columns.append("zero-shot")
    settings: list[tuple[str, int | None]] = []
    if "low_shot" in cfg.protocol.settings:
        settings += [(f"{shots}/category", shots) for shots in cfg.protocol.shots]
    if "full" in cfg.protocol.settings:
        settings.append(("full", None))
    for label, shots in settings:
        columns.append(label)
        for method in cfg.protocol.methods:
            values = []
            seeds = cfg.protocol.seeds if shots is not None else cfg.protocol.seeds[: cfg.protocol.full_seeds]
            for seed in seeds:
                steps = [f"trainer.max_steps={cfg.protocol.low_shot_max_steps}"] \
                    if shots is not None and cfg.protocol.low_shot_max_steps else []
                run_cfg = with_overrides(cfg, [*method_overrides(method), f"trainer.seed={seed}", *steps])
                subset = None if shots is None else low_shot_subset(task.name, task.train.examples, shots, seed,
                                                                    cfg.protocol.questions_per_image)
                name = f"{method}_{label.replace('/', '_per_')}_seed{seed}"
                metrics = finished_run(out / "runs" / name, run_cfg) if reuse else None
                reused = metrics is not None
                if metrics is None:  # an interrupted run with the same settings continues from its saved state
                    metrics = train_vl(run_cfg, out / "runs" / name, task, subset,
                                       resume=reuse and same_run_settings(out / "runs" / name / "config.yaml", run_cfg))
                print(f"{name}: {main} {metrics[main]:.2f} ({metrics['train_examples']} training examples"
                      f"{', finished earlier' if reused else ''})", flush=True)
                runs.append({"setting": label, "method": method, "seed": seed, "metrics": metrics})
                values.append(metrics[main])
            results.setdefault(method, {})[label] = summarise(values)
    report = {"task": task.name, "metric": main, "columns": columns, "results": results, "runs": runs,
              "config": dataclasses.asdict(cfg)}
    write_text_atomic(out / "protocol.json", json.dumps(report, indent=2, default=str))
    table = format_table(task.name, results, columns)
    write_text_atomic(out / "protocol.md", table)
    print(table)
    return report
