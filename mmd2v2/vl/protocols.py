"""`mmd2v2 vl protocol`: zero-shot, low-shot (several seeds) and full-data runs of several methods, as one table.

Writes protocol.json (every run's metrics, each setting's training sizes) and protocol.md (mean and variance of the
task's main metric over seeds, one row per method, one column per setting with its training size), each to a
temporary name first. Every method's config is resolved (and its teachers checked) before any data is read.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from mmd2v2.config import ConfigError, config_to_dict
from mmd2v2.files import write_text_atomic
from mmd2v2.vl.batches import BatchCollator
from mmd2v2.vl.config import TeacherSpec, VLConfig, logits_teacher, same_run_settings, vl_config_from_dict
from mmd2v2.vl.methods import method_overrides
from mmd2v2.vl.tasks import TaskData, VLTask, get_task
from mmd2v2.vl.teachers import DualEncoders
from mmd2v2.vl.train import train_vl
from mmd2v2.vl.zero_shot import ZeroShotScorer, zero_shot_evaluate


def zero_shot_source(cfg: VLConfig) -> tuple[str, TeacherSpec] | None:
    """The key and spec of the zero-shot model: protocol.zero_shot_model, else the teachers' dual encoder (CLIP or an
    mmd2v2 export), else the student's export."""
    if cfg.protocol.zero_shot_model:
        return "protocol.zero_shot_model", TeacherSpec(kind="mmd2v2", pretrained=cfg.protocol.zero_shot_model)
    source = logits_teacher(cfg.teachers)
    if source is None and cfg.student.init_from:
        return "student.init_from", TeacherSpec(kind="mmd2v2", pretrained=cfg.student.init_from)
    return source


def run_zero_shot(cfg: VLConfig, task: TaskData, source: tuple[str, TeacherSpec]) -> dict[str, float]:
    """The zero-shot protocol of the dual encoder `source` (key, spec) on the validation split (VCR and SNLI-VE)."""
    dual = DualEncoders(None, cfg.task.max_text_length).get(source[1], source[0])
    scorer = ZeroShotScorer(dual, task, cfg.teachers.zero_shot_logit_scale, cfg.teachers.zero_shot_prompt)
    collator = BatchCollator(dual.tokenizer, dual.max_length)
    return zero_shot_evaluate(
        scorer,
        task.val.examples,
        dual.preprocess,
        collator,
        cfg.trainer.eval_batch_size,
        cfg.trainer.progress_bar,
        cfg.trainer.num_workers,
    )


def with_overrides(cfg: VLConfig, overrides: list[str]) -> VLConfig:
    """`cfg` with `key=value` overrides applied."""
    return vl_config_from_dict(config_to_dict(cfg), overrides)


def summarise(values: list[float]) -> dict[str, float]:
    """Mean and (sample) variance of a setting's per-seed values (variance 0 for one value)."""
    return {
        "mean": statistics.fmean(values),
        "var": statistics.variance(values) if len(values) > 1 else 0.0,
        "n": float(len(values)),
    }


def size_label(counts: list[int]) -> str:
    """Training examples of a setting's runs: '1,500', or the range '1,497-1,503' when seeds draw different sizes."""
    low, high = min(counts), max(counts)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def format_table(
    task: VLTask, results: dict[str, dict[str, dict[str, float]]], columns: list[str], sizes: dict[str, list[int]]
) -> str:
    """Markdown table: rows = methods, columns = settings (with their training sizes), cells = mean (variance)."""
    headers = [f"{c} ({size_label(sizes[c])} {task.unit.split(' ')[0]})" if c in sizes else c for c in columns]
    lines = [f"| method | {' | '.join(headers)} |", "|---" * (len(columns) + 1) + "|"]
    for method, row in results.items():
        cells = []
        for column in columns:
            cell = row.get(column)
            cells.append("–" if cell is None else f"{cell['mean']:.2f} ({cell['var']:.2f}, n={int(cell['n'])})")
        lines.append(f"| {method} | {' | '.join(cells)} |")
    trained = "; ".join(f"{label}: {size_label(counts)}" for label, counts in sizes.items())
    return (
        f"{task.name} {task.main_metric} (%), mean (variance, seeds) on the validation split\n\n"
        + "\n".join(lines)
        + "\n"
        + (f"\ntraining {task.unit} per run: {trained}\n" if sizes else "")
    )


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
    method_cfgs = {method: with_overrides(cfg, method_overrides(method)) for method in cfg.protocol.methods}
    definition = get_task(cfg.task.name)
    wants_zero_shot = "zero_shot" in cfg.protocol.settings and definition.zero_shot_protocol
    zero_shot = zero_shot_source(cfg) if wants_zero_shot else None
    if wants_zero_shot and zero_shot is None:
        raise ConfigError(
            "config keys 'protocol.settings' and 'protocol.zero_shot_model': zero_shot needs an mmd2v2 "
            "export or CLIP (protocol.zero_shot_model, teachers.zero_shot or student.init_from)"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = definition.load(cfg.task)
    main = definition.main_metric
    runs: list[dict[str, Any]] = []
    results: dict[str, dict[str, dict[str, float]]] = {}
    columns: list[str] = []
    sizes: dict[str, list[int]] = {}
    if zero_shot is not None:
        metrics = run_zero_shot(cfg, task, zero_shot)
        runs.append({"setting": "zero_shot", "method": "dual_encoder", "seed": None, "metrics": metrics})
        prompt = definition.zero_shot_method(cfg.teachers.zero_shot_prompt)
        results.setdefault(f"zero-shot (dual encoder{prompt})", {})["zero-shot"] = summarise([metrics[main]])
        columns.append("zero-shot")
    settings: list[tuple[str, int | None]] = []
    if "low_shot" in cfg.protocol.settings:
        settings += [(f"{shots}/category", shots) for shots in cfg.protocol.shots]
    if "full" in cfg.protocol.settings:
        settings.append(("full", None))
    for label, shots in settings:
        columns.append(label)
        seeds = cfg.protocol.seeds if shots is not None else cfg.protocol.seeds[: cfg.protocol.full_seeds]
        subsets = {
            seed: None if shots is None else definition.low_shot(task.train.examples, shots, seed, cfg.protocol)
            for seed in seeds
        }
        sizes[label] = [len(task.train.examples) if subset is None else len(subset) for subset in subsets.values()]
        for method, method_cfg in method_cfgs.items():
            values = []
            for seed, subset in subsets.items():
                steps = (
                    [f"trainer.max_steps={cfg.protocol.low_shot_max_steps}"]
                    if shots is not None and cfg.protocol.low_shot_max_steps
                    else []
                )
                run_cfg = with_overrides(method_cfg, [f"trainer.seed={seed}", *steps])
                name = f"{method}_{label.replace('/', '_per_')}_seed{seed}"
                metrics = finished_run(out / "runs" / name, run_cfg) if reuse else None
                reused = metrics is not None
                if metrics is None:  # an interrupted run with the same settings continues from its saved state
                    metrics = train_vl(
                        run_cfg,
                        out / "runs" / name,
                        task,
                        subset,
                        resume=reuse and same_run_settings(out / "runs" / name / "config.yaml", run_cfg),
                    )
                print(
                    f"{name}: {main} {metrics[main]:.2f} ({metrics['train_examples']} training examples"
                    f"{', finished earlier' if reused else ''})",
                    flush=True,
                )
                runs.append({"setting": label, "method": method, "seed": seed, "metrics": metrics})
                values.append(metrics[main])
            results.setdefault(method, {})[label] = summarise(values)
    report = {
        "task": task.name,
        "metric": main,
        "columns": columns,
        "results": results,
        "runs": runs,
        "train_examples": sizes,
        "config": dataclasses.asdict(cfg),
    }
    write_text_atomic(out / "protocol.json", json.dumps(report, indent=2, default=str))
    table = format_table(definition, results, columns, sizes)
    write_text_atomic(out / "protocol.md", table)
    print(table)
    return report
