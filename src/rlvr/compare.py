"""A comparison study in one command: methods x seeds, each a normal `rlvr.train` run, then a table and a figure.

    python -m rlvr.compare --out studies/default --jobs 2                  # the methods of conf/compare.yaml x seeds 1,2,3
    python -m rlvr.compare --out studies/hard --seeds 1,2,3,4,5 data=arithmetic_hard
    python -m rlvr.compare --out studies/gpu --jobs 15 trainer=gpu         # one GPU, 15 runs at a time
    python -m rlvr.compare --out studies/slurm --launcher slurm hydra.launcher.partition=gpu hydra.launcher.cpus_per_task=2
    python -m rlvr.compare --report-only --out studies/default             # table.md, runs.csv, summary.csv, curves.png again

Methods are named override sets (conf/compare.yaml; `--study FILE` for your own); other arguments are
overrides for every run. Run (method, seed) is `<out>/<method>/seed<seed>/`, started with ckpt_path=auto: a
rerun of the same command skips finished runs and resumes the others from their last checkpoint.

Paired design: a run's prompt stream depends only on its seed, its training split (data.*) and
algorithm.prompts_per_step (rlvr.data.stream.PromptStream), never on the method, and the validation split
depends on data.* only; so seed s shows every method the same prompts, and each method is compared with
the baseline seed by seed: the mean paired difference with a 95 % t-interval over seeds.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlvr.metrics import METRICS_FILE, read_metrics, series

STUDY_FILE = "study.yaml"  # what the study ran: methods, seeds, overrides, the command
RUN_DIR = re.compile(r"seed(-?\d+)")
METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Set by this command for each run: a user's value would break the pairing or the run layout.
RESERVED = ("seed", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "ckpt_path")
TRAIN_ROW = "train/reward"  # every training step logs it (rlvr.metrics.step_metrics); validation rows never do
LEVEL = 0.95


# ---- the study: methods as named override sets ------------------------------------------------
@dataclass
class Study:
    methods: dict[str, list[str]]  # name -> overrides that make the method (the baseline's may be empty)
    baseline: str
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)  # for every run

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("a study needs at least one method")
        for name, overrides in self.methods.items():
            if not METHOD_NAME.fullmatch(name):
                raise ValueError(f"method name {name!r} is not usable as a folder name (letters, digits, _ . -)")
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise ValueError(f"method {name}: its overrides must be a list of strings, got {overrides!r}")
        if self.baseline not in self.methods:
            raise ValueError(f"baseline {self.baseline!r} is not one of the methods ({', '.join(self.methods)})")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")


def load_study(path: str | Path | None = None) -> Study:
    """A study file (default: the package's conf/compare.yaml)."""
    source = Path(path) if path else files("rlvr.conf") / "compare.yaml"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"study file {source} does not exist") from None
    unknown = set(raw) - {"methods", "baseline", "seeds", "overrides"}
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)} (a study has methods, baseline, seeds, overrides)")
    try:
        return Study(methods={k: list(v or []) for k, v in raw["methods"].items()}, baseline=raw["baseline"],
                     seeds=list(raw["seeds"]), overrides=list(raw.get("overrides") or []))
    except KeyError as missing:
        raise ValueError(f"{source} has no {missing} key") from None


def override_key(override: str) -> str:
    """The config key (or group) an override sets: `+a.b=1` -> a.b, `~a` -> a, `hydra/launcher=x` -> hydra/launcher."""
    return override.split("=", 1)[0].lstrip("~+")


def merge_overrides(base: list[str], later: list[str]) -> list[str]:
    """`base` with each key that `later` sets replaced by `later`'s value (Hydra refuses a key given twice)."""
    replaced = {override_key(o) for o in later}
    return [o for o in base if override_key(o) not in replaced] + list(later)


def select(study: Study, methods: list[str] | None = None, seeds: list[int] | None = None, overrides: list[str] = (),
           baseline: str | None = None) -> Study:
    """The study narrowed to `methods` and `seeds`, with the command line's overrides on top of its own."""
    if methods:
        unknown = [m for m in methods if m not in study.methods]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: the study defines {', '.join(study.methods)}")
    for override in overrides:
        if override_key(override) in RESERVED:
            raise ValueError(f"{override}: rlvr.compare sets {override_key(override)} for each run (use --seeds / --out)")
    chosen = {m: study.methods[m] for m in (methods or study.methods)}
    common = merge_overrides(study.overrides, overrides)
    for name, own in chosen.items():
        clash = {override_key(o) for o in own} & {override_key(o) for o in common}
        if clash:  # e.g. guidance=fixed for every run would turn the baseline into another method
            raise ValueError(f"{', '.join(sorted(clash))} is set by method {name} ({' '.join(own)}): it cannot also be set for every run")
    if baseline is None:  # a subset without the baseline (adding a method to a study) keeps it for the report
        baseline = study.baseline if study.baseline in chosen else next(iter(chosen))
    return Study(methods=chosen, baseline=baseline, seeds=list(seeds or study.seeds), overrides=common)


def run_overrides(study: Study, method: str) -> list[str]:
    return [*study.overrides, *study.methods[method]]


def record_study(out: Path, study: Study, command: str) -> None:
    """Write <out>/study.yaml; a study already there must have the same common overrides and the same
    overrides per method name (its runs would not be comparable otherwise). Methods and seeds accumulate."""
    file = out / STUDY_FILE
    methods, seeds = dict(study.methods), list(study.seeds)
    if file.is_file():
        old = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
        if list(old["overrides"]) != study.overrides:
            raise ValueError(f"{out} holds a study run with the overrides {old['overrides']}, not {study.overrides}: "
                             "runs with other settings are not comparable with its runs; use another --out")
        for name, own in old["methods"].items():
            if name in methods and list(own) != methods[name]:
                raise ValueError(f"{out}: method {name} was run with {own}, now {methods[name]}: rename the method or use another --out")
        methods = {**old["methods"], **methods}
        seeds = sorted(set(old["seeds"]) | set(seeds))
        study = Study(methods=methods, baseline=old["baseline"] if old["baseline"] in methods else study.baseline,
                      seeds=seeds, overrides=study.overrides)
    out.mkdir(parents=True, exist_ok=True)
    content = {"methods": study.methods, "baseline": study.baseline, "seeds": study.seeds, "overrides": study.overrides,
               "command": command}
    file.write_text(OmegaConf.to_yaml(OmegaConf.create(content)))


# ---- the runs -------------------------------------------------------------------------------
def compose_run(overrides: list[str]) -> Any:
    """The training config a run will get: checks every override (names, groups, values) before anything starts."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("rlvr.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def training_steps(run_dir: Path) -> int:
    """Training steps a run logged (0 without metrics.csv)."""
    return len(series(read_metrics(run_dir), TRAIN_ROW)) if (run_dir / METRICS_FILE).is_file() else 0


def prepare_run_dir(run_dir: Path, max_steps: int) -> str:
    """'done' (logged max_steps training steps), 'resume' (has checkpoints/last.ckpt) or 'start'. A run that
    stopped before its first checkpoint cannot resume (rlvr.train refuses to overwrite it): it is moved aside to
    <run dir>.partial<N> and started again."""
    if training_steps(run_dir) >= max_steps:
        return "done"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    if (run_dir / METRICS_FILE).exists() or (run_dir / "checkpoints").exists():
        number = 1
        while run_dir.with_name(f"{run_dir.name}.partial{number}").exists():
            number += 1
        aside = run_dir.with_name(f"{run_dir.name}.partial{number}")
        run_dir.rename(aside)
        print(f"rlvr.compare: {run_dir} stopped before its first checkpoint; moved to {aside.name}, starting again", flush=True)
    return "start"


def hydra_path(path: Path) -> str:
    """A path as a Hydra override value (quoted when it holds characters the override grammar reads)."""
    text = str(path.resolve())
    if re.fullmatch(r"[\w/.\-]+", text):
        return text
    if "'" in text:
        raise ValueError(f"output path {text!r} contains a quote: choose another --out")
    return f"'{text}'"


@dataclass
class Job:
    method: str
    seeds: list[int]
    overrides: list[str]


def steps_per_method(study: Study, launcher: str | None = None) -> dict[str, int]:
    """Each method's max_steps, from its composed config: a bad override fails here, before anything is written."""
    from hydra.errors import HydraException

    extra = [f"seed={study.seeds[0]}"] + ([f"hydra/launcher={launcher}"] if launcher else [])  # hydra.launcher.* overrides need it
    steps = {}
    for method in study.methods:
        try:
            steps[method] = int(compose_run([*run_overrides(study, method), *extra]).max_steps)
        except HydraException as err:
            raise ValueError(f"method {method} ({' '.join(run_overrides(study, method)) or 'no overrides'}): {err}") from err
    return steps


def plan_jobs(out: Path, study: Study, max_steps: dict[str, int]) -> list[Job]:
    """The (method, seed) runs still to do, seed-major: all methods of seed 1 first, so a study cut short still
    holds complete pairs."""
    jobs: list[Job] = []
    for seed in study.seeds:
        for method in study.methods:
            state = prepare_run_dir(out / method / f"seed{seed}", max_steps[method])
            if state == "done":
                print(f"rlvr.compare: {method}/seed{seed} is finished ({max_steps[method]} steps): skipped", flush=True)
            else:
                if state == "resume":
                    print(f"rlvr.compare: {method}/seed{seed} resumes from its last checkpoint", flush=True)
                jobs.append(Job(method, [seed], run_overrides(study, method)))
    return jobs


def train_command(job: Job, out: Path, launcher: str | None) -> list[str]:
    command = [sys.executable, "-m", "rlvr.train"]
    if launcher is None:  # one run in this process's child
        return [*command, *job.overrides, f"seed={job.seeds[0]}", f"hydra.run.dir={hydra_path(out / job.method / f'seed{job.seeds[0]}')}",
                "ckpt_path=auto"]
    return [*command, "-m", f"hydra/launcher={launcher}", *job.overrides, "seed=" + ",".join(map(str, job.seeds)),
            f"hydra.sweep.dir={hydra_path(out / job.method)}", "hydra.sweep.subdir=seed${seed}", "ckpt_path=auto"]


def execute(jobs: list[Job], out: Path, parallel: int, launcher: str | None) -> list[str]:
    """Run the jobs, `parallel` at a time, each with cores // parallel threads; returns the failures.
    With a Hydra launcher, one multirun per method (its seeds as a sweep), all submitted at once: the launcher
    runs them where it runs jobs (Slurm...), and each multirun waits for its own."""
    if launcher is not None:  # one job per method, its pending seeds swept
        by_method: dict[str, Job] = {}
        for job in jobs:
            by_method.setdefault(job.method, Job(job.method, [], job.overrides)).seeds.extend(job.seeds)
        jobs, parallel = list(by_method.values()), max(1, len(by_method))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // parallel)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if launcher is None:  # torch's intra-op threads, split between the runs sharing this machine
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"rlvr.compare: {len(jobs)} job(s), {parallel} at a time" + (f", {threads} thread(s) each" if launcher is None else f", launcher {launcher}"), flush=True)

    def run(job: Job) -> str | None:
        name = f"{job.method}/seed{','.join(map(str, job.seeds))}"
        log_dir = out / job.method / (f"seed{job.seeds[0]}" if launcher is None else "")
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "compare.log"
        start = time.perf_counter()
        with log.open("a") as handle:
            command = train_command(job, out, launcher)
            handle.write(f"\n$ {shlex.join(command)}\n")
            handle.flush()
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
        took = time.perf_counter() - start
        if code:
            print(f"rlvr.compare: {name} FAILED (exit {code}) after {took:.0f} s: see {log}", flush=True)
            return f"{name} (exit {code}, log {log})"
        print(f"rlvr.compare: {name} finished in {took:.0f} s", flush=True)
        return None

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return [failure for failure in pool.map(run, jobs) if failure]


# ---- statistics -----------------------------------------------------------------------------
def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (the closed forms of Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi)(theta + sin(theta) * (cos + 2/3 cos^3 + ... up to cos^(df-2)))
        term = total = c if df > 1 else 0.0
        for power in range(3, df - 1, 2):
            term *= c * c * (power - 1) / power
            total += term
        return 2 / math.pi * (theta + s * total)
    term = total = 1.0  # even: sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
    for power in range(2, df - 1, 2):
        term *= c * c * (power - 1) / power
        total += term
    return s * total


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t with integer df >= 1 (no scipy needed), by bisection on the exact CDF."""
    if not 0 < q < 1:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    mass = 2 * q - 1
    low, high = 0.0, 1.0
    while _t_central_mass(high, df) < mass:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central_mass(middle, df) < mass else (low, middle)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width of the two-sided t-interval at `level`); the half-width is nan for fewer than 2 values."""
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t_quantile((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_differences(method: dict[int, float], baseline: dict[int, float]) -> list[float]:
    """method - baseline for each seed both have, in seed order."""
    return [method[s] - baseline[s] for s in sorted(method.keys() & baseline.keys())]


def seeds_to_separate(differences: list[float], margin: float, level: float = LEVEL, most: int = 1000) -> int | None:
    """The fewest seeds whose paired interval half-width would be <= margin, if the differences spread as these do
    (None: fewer than 2 differences, or more than `most` seeds)."""
    if len(differences) < 2:
        return None
    spread = statistics.stdev(differences)
    for n in range(2, most + 1):
        if t_quantile((1 + level) / 2, n - 1) * spread / math.sqrt(n) <= margin:
            return n
    return None


def curve_area(steps: list[float], values: list[float]) -> float:
    """Area under a curve by trapezoids, divided by its step range: the curve's mean height (one point: its value)."""
    if len(steps) != len(values) or not steps:
        raise ValueError(f"a curve needs as many steps as values, and at least one (got {len(steps)} and {len(values)})")
    if len(steps) == 1:
        return values[0]
    area = sum((steps[i + 1] - steps[i]) * (values[i + 1] + values[i]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def steps_to_reach(steps: list[float], values: list[float], target: float) -> float | None:
    """The first step whose value is >= target (None: never reached)."""
    return next((step for step, value in zip(steps, values) if value >= target - 1e-9), None)


def binomial_se(accuracy: float, problems: int) -> float:
    """Standard error of an accuracy measured on `problems` independent problems."""
    return math.sqrt(accuracy * (1 - accuracy) / problems)


# ---- reading the runs -----------------------------------------------------------------------
@dataclass
class Run:
    method: str
    seed: int
    path: Path
    val_steps: list[float]  # training steps done at each validation (0: before training)
    val: list[float]
    train: dict[str, list[float]]  # per training step
    config: Any = None  # the run's .hydra/config.yaml, when there is one
    complete: bool = True

    @property
    def final(self) -> float:
        return self.val[-1]


def validation_curve(rows: list[dict[str, float]], metric: str = "val/accuracy") -> tuple[list[float], list[float]]:
    """(training steps done, value) at each validation: the count of training rows logged before it, so the
    validation before training is at 0 and the one after step 25 at 25 (Lightning's own step column says 24);
    a validation logged twice at one point (a resume) keeps the later value."""
    points: dict[float, float] = {}
    done = 0
    for row in rows:
        if TRAIN_ROW in row:
            done += 1
        if metric in row:
            points[float(done)] = row[metric]
    return list(points), list(points.values())


TRAIN_METRICS = ("train/all_negative_frac", "train/signal_frac", "train/accuracy")


def read_run(path: Path, method: str, seed: int) -> Run:
    rows = read_metrics(path)
    steps, val = validation_curve(rows)
    if not val:
        raise ValueError(f"{path / METRICS_FILE} has no val/accuracy: the run did not validate")
    config_file = path / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.is_file() else None
    train = {name: series(rows, name) for name in TRAIN_METRICS}
    complete = config is None or len(series(rows, TRAIN_ROW)) >= int(config.max_steps)
    if config is not None and int(config.seed) != seed:
        raise ValueError(f"{path} ran with seed={config.seed}, but its folder says seed {seed}: the pairing by seed would be wrong")
    return Run(method, seed, path, steps, val, train, config, complete)


def method_order(out: Path, recorded: dict | None) -> list[str]:
    found = sorted(d.name for d in out.iterdir() if d.is_dir() and any(RUN_DIR.fullmatch(r.name) for r in d.iterdir() if r.is_dir()))
    listed = [m for m in (recorded or {}).get("methods", {}) if m in found]
    return listed + [m for m in found if m not in listed]


def read_study(out: Path) -> tuple[dict[str, dict[int, Run]], list[Run], dict | None]:
    """Every <out>/<method>/seed<s>/ with a metrics.csv: (complete runs by method and seed, incomplete runs, study.yaml).
    Runs that differ in what makes the prompt stream (data, prompts per step) or in max_steps are an error."""
    if not out.is_dir():
        raise FileNotFoundError(f"study directory {out} does not exist")
    recorded = OmegaConf.to_container(OmegaConf.load(out / STUDY_FILE)) if (out / STUDY_FILE).is_file() else None
    runs: dict[str, dict[int, Run]] = {}
    incomplete: list[Run] = []
    for method in method_order(out, recorded):
        for path in sorted((out / method).iterdir()):
            match = RUN_DIR.fullmatch(path.name)
            if not match or not (path / METRICS_FILE).is_file():
                continue
            run = read_run(path, method, int(match[1]))
            if run.complete:
                runs.setdefault(method, {})[run.seed] = run
            else:
                incomplete.append(run)
    if not runs:
        raise ValueError(f"no complete run under {out} (expected <out>/<method>/seed<s>/metrics.csv)")
    check_comparable([r for by_seed in runs.values() for r in by_seed.values()])
    return runs, incomplete, recorded


def check_comparable(runs: list[Run]) -> None:
    """Same data, prompts per step and steps in every run: otherwise a seed is not the same prompt stream."""
    configured = [r for r in runs if r.config is not None]
    for key in ("data", "algorithm.prompts_per_step", "max_steps"):
        values = {r.path: OmegaConf.to_yaml(OmegaConf.create({"v": OmegaConf.select(r.config, key)})) for r in configured}
        if len(set(values.values())) > 1:
            first = next(iter(values))
            other = next(p for p, v in values.items() if v != values[first])
            raise ValueError(f"runs differ in {key} ({first} vs {other}): a seed is not the same prompt stream in both, "
                             "so they cannot be compared pairwise; put them in separate studies")


# ---- the report -----------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean_cell(mean: float, half: float) -> str:
    return _fmt(mean) + ("" if math.isnan(half) else f" ± {half:.3f}")


def _difference_cell(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.3f}" + ("" if math.isnan(half) else f" [{mean - half:+.3f}, {mean + half:+.3f}]")


def per_run(run: Run, window: int) -> dict[str, float]:
    negative, signal = run.train["train/all_negative_frac"], run.train["train/signal_frac"]
    return {
        "val_start": run.val[0], "val_final": run.final, "val_best": max(run.val), "val_auc": curve_area(run.val_steps, run.val),
        "all_negative_start": statistics.fmean(negative[:window]) if negative else math.nan,
        "all_negative": statistics.fmean(negative) if negative else math.nan,
        "signal": statistics.fmean(signal) if signal else math.nan,
        "steps": run.val_steps[-1],
    }


def summarise(runs: dict[str, dict[int, Run]], baseline: str, window: int, margin: float) -> tuple[list[dict], list[dict]]:
    """(one row per run, one row per method): the numbers of table.md, runs.csv and summary.csv."""
    numbers = {m: {s: per_run(r, window) for s, r in sorted(by_seed.items())} for m, by_seed in runs.items()}
    base = runs.get(baseline, {})
    run_rows, method_rows = [], []
    for method, by_seed in numbers.items():
        reach = {s: steps_to_reach(runs[method][s].val_steps, runs[method][s].val, base[s].final) for s in by_seed if s in base}
        for seed, values in by_seed.items():
            step = reach.get(seed)
            run_rows.append({"method": method, "seed": seed, **values, "path": str(runs[method][seed].path),
                             "steps_to_baseline_final": "" if seed not in reach else "not reached" if step is None else step})
        row: dict[str, Any] = {"method": method, "seeds": len(by_seed)}
        for key in ("val_start", "val_final", "val_best", "val_auc", "all_negative_start", "all_negative", "signal"):
            row[key], row[f"{key}_half"] = mean_interval([v[key] for v in by_seed.values()])
        # Median with "not reached" above every step: a mean over the seeds that reached would flatter a method.
        reached = [math.inf if r is None else r for r in reach.values()]
        row["reached"], row["pairs_for_reach"] = sum(r != math.inf for r in reached), len(reached)
        row["steps_to_baseline_final_median"] = statistics.median(reached) if reached else math.nan
        if method != baseline and base:
            for key in ("val_final", "val_best", "val_auc"):
                diffs = paired_differences({s: v[key] for s, v in by_seed.items()}, {s: v[key] for s, v in numbers[baseline].items()})
                row[f"diff_{key}"], row[f"diff_{key}_half"] = mean_interval(diffs)
                row[f"diff_{key}_pairs"] = len(diffs)
                if key == "val_final":
                    row["seeds_to_separate"] = seeds_to_separate(diffs, margin)
        method_rows.append(row)
    return run_rows, method_rows


def render_table(out: Path, runs: dict[str, dict[int, Run]], baseline: str, window: int, margin: float,
                 incomplete: list[Run], recorded: dict | None) -> tuple[str, list[dict], list[dict]]:
    run_rows, method_rows = summarise(runs, baseline, window, margin)
    any_run = next(iter(next(iter(runs.values())).values()))
    val_size = OmegaConf.select(any_run.config, "data.val_size") if any_run.config is not None else None
    steps = int(any_run.val_steps[-1])
    lines = [f"# Comparison study: {out}", ""]
    if recorded and recorded.get("command"):
        lines += ["Reproduce: `" + recorded["command"] + "`", ""]
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    lines += [f"Seeds {', '.join(map(str, seeds))}; {steps} training steps; greedy validation on "
              f"{val_size if val_size is not None else 'an unknown number of'} problems. Mean over seeds ± the half-width of its 95 % "
              "t-interval. AUC: area under the validation curve over its step range (its mean height). All-negative: "
              f"share of groups with no correct roll-out (first {window} steps / all steps); gradient: share of groups whose "
              "advantages are not all 0.", ""]
    header = ["method", "seeds", "val @0", "final", "best", "AUC", f"all-negative, first {window}", "all-negative, all", "groups with a gradient"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in method_rows:
        cells = [row["method"], str(row["seeds"])] + [_mean_cell(row[k], row[f"{k}_half"]) for k in
                 ("val_start", "val_final", "val_best", "val_auc", "all_negative_start", "all_negative", "signal")]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline in runs:
        lines += ["", f"## Against {baseline}, paired by seed (same prompt stream)", "",
                  f"Mean difference [95 % t-interval]; steps to reach {baseline}'s final accuracy of the same seed: median "
                  f"(not reached counts as never), and how many seeds reached it; seeds needed for a half-width of {margin:.2f} "
                  "if the paired differences spread as here.", ""]
        header = ["method", "pairs", "final", "best", "AUC", f"steps to {baseline}'s final (reached)", f"seeds for ±{margin:.2f}"]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in method_rows:
            median = row["steps_to_baseline_final_median"]
            reach = ("not reached" if median == math.inf else _fmt(median, 0)) + f" ({row['reached']}/{row['pairs_for_reach']})"
            if row["method"] == baseline:
                lines.append(f"| {baseline} | – | – | – | – | {reach} | – |")
                continue
            diffs = [_difference_cell(row[f"diff_{k}"], row[f"diff_{k}_half"]) for k in ("val_final", "val_best", "val_auc")]
            needed = row.get("seeds_to_separate")
            lines.append(f"| {row['method']} | {row['diff_val_final_pairs']} | " + " | ".join(diffs) + f" | {reach} | "
                         f"{needed if needed is not None else '–'} |")
    lines += ["", "## What this design can separate", ""]
    finals = [r.final for by_seed in runs.values() for r in by_seed.values()]
    if isinstance(val_size, int) and val_size > 0:
        accuracy = statistics.fmean(finals)
        lines.append(f"- One accuracy on {val_size} problems near {accuracy:.2f}: binomial standard error "
                     f"{binomial_se(accuracy, val_size):.3f} (problems held fixed across runs, so part of it cancels in a paired difference).")
    halves = [(row["method"], row["diff_val_final_half"]) for row in method_rows if not math.isnan(row.get("diff_val_final_half", math.nan))]
    if halves:
        lines.append("- Half-width of the paired 95 % interval of the final accuracy, i.e. the smallest difference from "
                     f"{baseline} these seeds can tell from 0: " + ", ".join(f"{m} {h:.3f}" for m, h in halves) + ".")
    else:
        lines.append(f"- No paired interval: it needs at least 2 seeds run by a method and by {baseline}.")
    if incomplete:
        lines += ["", "Left out, not finished: " + ", ".join(f"{r.method}/seed{r.seed} ({len(r.train['train/accuracy'])} steps)" for r in incomplete) + "."]
    return "\n".join(lines) + "\n", run_rows, method_rows


def band(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """(steps, mean, mean - sd, mean + sd) over curves at the steps they all have (no band for one curve)."""
    common = set(curves[0][0]).intersection(*(set(steps) for steps, _ in curves[1:]))
    steps = sorted(common)
    columns = [[dict(zip(s, v))[step] for s, v in curves] for step in steps]
    means = [statistics.fmean(c) for c in columns]
    spread = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
    return steps, means, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)]


def plot_study(runs: dict[str, dict[int, Run]], out: Path, smooth_window: int = 15) -> Path:
    """curves.png: validation accuracy, all-negative share and gradient share per method, mean over seeds ± 1 sd."""
    from rlvr.plot import plot_bands, smooth

    panels = []
    val = {m: band([(r.val_steps, r.val) for r in by_seed.values()]) for m, by_seed in runs.items()}
    panels.append(("val accuracy (greedy)", val))
    for metric, title in (("train/all_negative_frac", "all-negative groups"), ("train/signal_frac", "groups with a gradient")):
        per_method = {}
        for method, by_seed in runs.items():
            curves = [(list(map(float, range(1, len(r.train[metric]) + 1))), smooth(r.train[metric], smooth_window))
                      for r in by_seed.values() if r.train[metric]]
            if curves:
                per_method[method] = band(curves)
        if per_method:
            panels.append((f"{title} (moving mean of {smooth_window} steps)", per_method))
    seeds = sorted({len(by_seed) for by_seed in runs.values()})
    note = f"mean of {'/'.join(map(str, seeds))} seeds, band ±1 sd"
    return plot_bands(panels, out / "curves.png", note)


def write_csv(file: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))
    with file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def report(out: str | Path, baseline: str | None = None, window: int = 25, margin: float = 0.03) -> str:
    """Write <out>/table.md, runs.csv, summary.csv and curves.png from the runs under <out>; returns the table."""
    out = Path(out)
    runs, incomplete, recorded = read_study(out)
    baseline = baseline or (recorded or {}).get("baseline") or ("grpo" if "grpo" in runs else next(iter(runs)))
    if baseline not in runs:
        print(f"rlvr.compare: no finished run of the baseline {baseline}: no paired differences", flush=True)
    table, run_rows, method_rows = render_table(out, runs, baseline, window, margin, incomplete, recorded)
    (out / "table.md").write_text(table)
    write_csv(out / "runs.csv", run_rows)
    write_csv(out / "summary.csv", method_rows)
    plot_study(runs, out)
    return table


# ---- the command ----------------------------------------------------------------------------
def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas (1,2,3), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr.compare", description=__doc__.split("\n")[0],
                                     epilog="Other arguments are rlvr.train overrides for every run (data=arithmetic_hard trainer=gpu ...).")
    parser.add_argument("overrides", nargs="*", help="rlvr.train overrides for every run")
    parser.add_argument("--out", default="outputs/compare", help="study directory (default: outputs/compare)")
    parser.add_argument("--study", help="a study file of your own (default: the package's conf/compare.yaml)")
    parser.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], help="comma-separated subset of the study's methods")
    parser.add_argument("--seeds", type=_seed_list, help="comma-separated seeds (default: the study's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine, each with cores/jobs threads (default 1)")
    parser.add_argument("--launcher", help="a Hydra launcher (hydra/launcher=NAME, e.g. slurm): one multirun per method, all submitted at once")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the runs already under --out")
    parser.add_argument("--baseline", help="the method others are paired with (default: the study's)")
    parser.add_argument("--window", type=int, default=25, help="training steps counted as 'the start' (default 25)")
    parser.add_argument("--margin", type=float, default=0.03, help="difference the report asks how many seeds would separate (default 0.03)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.window < 1 or args.margin <= 0:
        parser.error("--jobs and --window must be >= 1 and --margin > 0")
    out = Path(args.out)
    try:
        if not args.report_only:
            study = select(load_study(args.study), args.methods, args.seeds, args.overrides, args.baseline)
            max_steps = steps_per_method(study, args.launcher)
            record_study(out, study, "python -m rlvr.compare " + shlex.join(argv if argv is not None else sys.argv[1:]))
            failures = execute(plan_jobs(out, study, max_steps), out, args.jobs, args.launcher)
            if failures:
                print("rlvr.compare: failed runs: " + "; ".join(failures), flush=True)
        else:
            failures = []
        print(report(out, args.baseline, args.window, args.margin))
        print(f"rlvr.compare: wrote {out / 'table.md'}, runs.csv, summary.csv, curves.png", flush=True)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
