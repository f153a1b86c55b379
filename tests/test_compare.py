"""rlvr.compare: the study's statistics on hand-computed cases, the report from hand-written runs, the run
bookkeeping (skip, resume, restart), and the command end to end on tiny runs."""

import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlvr.compare import (
    Job, Study, band, compose_run, curve_area, load_study, main, mean_interval, merge_overrides, paired_differences,
    prepare_run_dir, read_study, record_study, report, run_overrides, seeds_to_separate, select, steps_per_method, steps_to_reach,
    t_quantile, train_command, validation_curve,
)
from rlvr.plot import plot_bands

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- statistics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("df, printed", [(1, 12.706), (2, 4.303), (4, 2.776), (7, 2.365), (10, 2.228), (29, 2.045)])
def test_t_quantile_matches_the_printed_student_table(df, printed):
    assert t_quantile(0.975, df) == pytest.approx(printed, abs=5e-4)


def test_t_quantile_is_symmetric_and_tends_to_the_normal():
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)  # another level, an odd df
    assert t_quantile(0.975, 20000) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-3)
    assert t_quantile(0.975, 5) > t_quantile(0.975, 6) > t_quantile(0.95, 6)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError, match="quantile level"):
        t_quantile(1.0, 3)


def test_paired_interval_by_hand():
    # baseline 0.5 0.6 0.7, method 0.6 0.6 0.8 on seeds 1..3 (seed 4 only in the method: no pair)
    diffs = paired_differences({1: 0.6, 2: 0.6, 3: 0.8, 4: 0.9}, {3: 0.7, 1: 0.5, 2: 0.6})
    assert diffs == pytest.approx([0.1, 0.0, 0.1])
    mean, half = mean_interval(diffs)
    # sd = sqrt(((1/30)^2 + (2/30)^2 + (1/30)^2) / 2) = 0.057735; se = sd / sqrt(3) = 1/30; t(0.975, 2) = 4.3027
    assert mean == pytest.approx(1 / 15)
    assert half == pytest.approx(4.3027 / 30, abs=1e-4)
    single_mean, single_half = mean_interval([0.4])
    assert single_mean == 0.4 and math.isnan(single_half)
    assert all(math.isnan(v) for v in mean_interval([]))


def test_seeds_to_separate_by_hand():
    # sd of [0, 0.02] = 0.014142: n=3 gives 4.303 * 0.014142 / sqrt(3) = 0.0351 > 0.03, n=4 gives 3.182 * 0.014142 / 2 = 0.0225
    assert seeds_to_separate([0.0, 0.02], 0.03) == 4
    assert seeds_to_separate([0.0, 0.02], 0.036) == 3
    assert seeds_to_separate([0.1], 0.03) is None
    assert seeds_to_separate([0.0, 1.0], 0.001, most=50) is None


def test_curve_area_is_the_trapezoid_mean_height():
    assert curve_area([0, 10, 30], [0.0, 1.0, 1.0]) == pytest.approx((10 * 0.5 + 20 * 1.0) / 30)
    assert curve_area([0, 25, 50], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert curve_area([100], [0.7]) == 0.7
    with pytest.raises(ValueError, match="as many steps as values"):
        curve_area([0, 1], [0.5])


def test_steps_to_reach_first_step_at_or_above_target():
    steps, values = [0, 25, 50, 75], [0.5, 0.62, 0.6, 0.7]
    assert steps_to_reach(steps, values, 0.6) == 25
    assert steps_to_reach(steps, values, 0.62) == 25  # equal counts as reached
    assert steps_to_reach(steps, values, 0.65) == 75
    assert steps_to_reach(steps, values, 0.71) is None
    assert steps_to_reach(steps, values, 0.4) == 0


def test_validation_points_count_the_training_steps_before_them():
    rows = [{"step": 0, "val/accuracy": 0.5}, *({"step": s, "train/reward": 0.1} for s in range(3)),
            {"step": 2, "val/accuracy": 0.6}, {"step": 3, "train/reward": 0.2}, {"step": 3, "val/accuracy": 0.65},
            {"step": 3, "val/accuracy": 0.7}]  # the last one logged again after a resume: the later value counts
    assert validation_curve(rows) == ([0.0, 3.0, 4.0], [0.5, 0.6, 0.7])


# ---- the study definition -------------------------------------------------------------------------
def test_shipped_study_names_the_issue_methods_and_each_composes():
    study = load_study()
    assert study.baseline == "grpo" and study.methods["grpo"] == [] and len(study.seeds) >= 3
    built = {m: compose_run([*run_overrides(study, m), "seed=3"]) for m in study.methods}
    targets = {m: (c.guidance._target_.rsplit(".", 1)[1], c.advantage._target_.rsplit(".", 1)[1]) for m, c in built.items()}
    assert targets == {"grpo": ("Guidance", "GRPOAdvantage"), "fixed": ("FixedGuidance", "GRPOAdvantage"),
                       "adaptive": ("AdaptiveGuidance", "GRPOAdvantage"), "sgpo": ("Guidance", "SGPOAdvantage"),
                       "sgpo_adaptive": ("AdaptiveGuidance", "SGPOAdvantage")}
    # What makes the prompt stream (and the validation split) is the same for every method: seed s pairs them.
    stream = {m: OmegaConf.to_yaml(OmegaConf.create({"d": c.data, "p": c.algorithm.prompts_per_step, "s": c.seed})) for m, c in built.items()}
    assert len(set(stream.values())) == 1
    assert built["grpo"].data.val_size == 1000


def test_harder_regime_preset_keeps_reference_steps_for_guidance():
    study = select(load_study(), ["adaptive"], overrides=["data=arithmetic_hard"])
    cfg = compose_run(run_overrides(study, "adaptive"))
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    examples = data.train()[:50] + data.val()
    assert all(e.steps for e in examples)
    assert min(len(e.steps) + 1 for e in examples) > 2  # harder than the default's 2-term problems
    assert cfg.data.val_size == 1000  # the study's validation size still applies


def test_command_line_overrides_replace_the_studys_and_cannot_redefine_a_method():
    assert merge_overrides(["data.val_size=1000", "max_steps=300"], ["+data.val_size=8", "trainer=gpu"]) == [
        "max_steps=300", "+data.val_size=8", "trainer=gpu"]
    study = select(load_study(), ["grpo", "fixed"], [4, 5], ["data.val_size=64"])
    assert list(study.methods) == ["grpo", "fixed"] and study.seeds == [4, 5] and study.overrides == ["data.val_size=64"]
    with pytest.raises(ValueError, match="guidance is set by method fixed"):
        select(load_study(), overrides=["guidance=decay"])  # would turn the baseline into a guided run
    with pytest.raises(ValueError, match="rlvr.compare sets seed"):
        select(load_study(), overrides=["seed=3"])
    with pytest.raises(ValueError, match="unknown method.*grpo, fixed"):
        select(load_study(), methods=["nope"])
    with pytest.raises(ValueError, match="baseline 'x' is not one of the methods"):
        Study(methods={"a": []}, baseline="x", seeds=[1])
    with pytest.raises(ValueError, match="folder name"):
        Study(methods={"a/b": []}, baseline="a/b", seeds=[1])


def test_study_file_of_ones_own(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text("baseline: a\nseeds: [7]\nmethods:\n  a: []\n  b: [loss=gspo]\n")
    study = load_study(file)
    assert study.methods == {"a": [], "b": ["loss=gspo"]} and study.seeds == [7] and study.overrides == []
    file.write_text("baseline: a\nseeds: [7]\nmethods: {a: []}\nextra: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_study(file)


def test_recorded_study_refuses_other_settings_and_accumulates_seeds(tmp_path):
    first = select(load_study(), ["grpo", "fixed"], [1, 2], ["max_steps=10"])
    record_study(tmp_path, first, "cmd one")
    record_study(tmp_path, select(load_study(), ["grpo", "sgpo"], [3], ["max_steps=10"]), "cmd two")
    recorded = OmegaConf.load(tmp_path / "study.yaml")
    assert list(recorded.methods) == ["grpo", "fixed", "sgpo"] and list(recorded.seeds) == [1, 2, 3]
    with pytest.raises(ValueError, match="not comparable"):
        record_study(tmp_path, select(load_study(), ["grpo"], [1], ["max_steps=20"]), "cmd three")


def test_a_bad_override_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--methods", "grpo,fixed", "guidance.nope=1"])
    assert exit_info.value.code == 2
    assert "method grpo (data.val_size=1000 guidance.nope=1): Could not override 'guidance.nope'" in capsys.readouterr().err
    assert not out.exists()


def test_commands_run_in_place_with_resume(tmp_path):
    job = Job("fixed", [2], ["guidance=fixed"])
    local = train_command(job, tmp_path, None)
    assert local[1:3] == ["-m", "rlvr.train"] and "seed=2" in local and "ckpt_path=auto" in local
    assert f"hydra.run.dir={(tmp_path / 'fixed' / 'seed2').resolve()}" in local
    swept = train_command(Job("fixed", [1, 2, 3], ["guidance=fixed"]), tmp_path, "slurm")
    assert "-m" in swept[3:] and "hydra/launcher=slurm" in swept and "seed=1,2,3" in swept
    assert "hydra.sweep.subdir=seed${seed}" in swept and f"hydra.sweep.dir={(tmp_path / 'fixed').resolve()}" in swept
    spaced = train_command(job, tmp_path / "a b", None)
    assert f"hydra.run.dir='{(tmp_path / 'a b' / 'fixed' / 'seed2').resolve()}'" in spaced


# ---- runs on disk ----------------------------------------------------------------------------------
def write_run(run_dir: Path, val: list[float], negative: list[float], signal: list[float] | None = None, val_every: int = 2,
              seed: int | None = None, max_steps: int | None = None, data_seed: int = 1) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it (validation before training, then every val_every steps)
    and the .hydra/config.yaml Hydra writes beside it."""
    steps = len(negative)
    signal = signal or [1 - n for n in negative]
    header = "epoch,step,train/reward,train/accuracy,train/all_negative_frac,train/signal_frac,val/accuracy"
    lines = [header, f"0,0,,,,,{val[0]}"]
    for step in range(steps):
        lines.append(f"0,{step},0.5,{1 - negative[step]},{negative[step]},{signal[step]},")
        if (step + 1) % val_every == 0:
            lines.append(f"0,{step},,,,,{val[(step + 1) // val_every]}")
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run_dir / ".hydra").mkdir()
    seed = int(run_dir.name.removeprefix("seed")) if seed is None else seed
    config = {"seed": seed, "max_steps": max_steps or steps, "data": {"seed": data_seed, "val_size": 400}, "algorithm": {"prompts_per_step": 8}}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return run_dir


# Three seeds of a baseline and a method, 6 training steps, validated at 0, 2, 4, 6.
BASE = {1: [0.50, 0.52, 0.55, 0.60], 2: [0.48, 0.50, 0.58, 0.56], 3: [0.50, 0.55, 0.55, 0.62]}
BETTER = {1: [0.50, 0.58, 0.62, 0.64], 2: [0.48, 0.55, 0.55, 0.55], 3: [0.50, 0.60, 0.66, 0.70]}
NEGATIVE = {"grpo": [0.6, 0.5, 0.5, 0.4, 0.4, 0.3], "guided": [0.4, 0.3, 0.3, 0.2, 0.2, 0.2]}


def write_study(out: Path) -> Path:
    for method, curves in (("grpo", BASE), ("guided", BETTER)):
        for seed, val in curves.items():
            write_run(out / method / f"seed{seed}", val, NEGATIVE[method])
    return out


def test_report_from_written_runs(tmp_path, capsys):
    out = write_study(tmp_path / "study")
    write_run(out / "guided" / "seed4", [0.5, 0.6], [0.5, 0.5], max_steps=6)  # stopped after 2 of 6 steps
    (out / "guided" / "seed1.partial1").mkdir()  # a run moved aside: not a seed folder
    assert main(["--report-only", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table == capsys.readouterr().out.split("rlvr.compare: wrote")[0].rstrip("\n") + "\n"
    finals = [BETTER[s][-1] - BASE[s][-1] for s in (1, 2, 3)]  # +0.04, -0.01, +0.08
    mean, half = statistics.fmean(finals), t_quantile(0.975, 2) * statistics.stdev(finals) / math.sqrt(3)
    assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in table
    best = [max(BETTER[s]) - max(BASE[s]) for s in (1, 2, 3)]
    assert f"{statistics.fmean(best):+.3f} [" in table
    # guided reaches grpo's final of the same seed at steps 4 (0.62 >= 0.60), never (0.55 < 0.56), 4 (0.66 >= 0.62)
    assert "| 4 (2/3) |" in table  # median of 4, 4, never
    assert "| 6 (3/3) |" in table  # grpo reaches its own final at 6, 4 (0.58 >= 0.56), 6
    assert "guided/seed4 (2 steps)" in table and "Left out, not finished" in table
    rows = {(r["method"], r["seed"]): r for r in _csv(out / "runs.csv")}
    assert set(rows) == {(m, str(s)) for m in ("grpo", "guided") for s in (1, 2, 3)}
    assert float(rows[("guided", "3")]["val_auc"]) == pytest.approx(curve_area([0, 2, 4, 6], BETTER[3]))
    assert rows[("guided", "2")]["steps_to_baseline_final"] == "not reached" and rows[("guided", "1")]["steps_to_baseline_final"] == "4.0"
    assert float(rows[("grpo", "1")]["all_negative"]) == pytest.approx(statistics.fmean(NEGATIVE["grpo"]))
    summary = {r["method"]: r for r in _csv(out / "summary.csv")}
    assert float(summary["guided"]["diff_val_final"]) == pytest.approx(mean)
    assert float(summary["guided"]["diff_val_final_half"]) == pytest.approx(half)
    assert float(summary["grpo"]["all_negative_start"]) == pytest.approx(statistics.fmean(NEGATIVE["grpo"]))  # window 25 > 6 steps
    accuracy = statistics.fmean([v[-1] for curves in (BASE, BETTER) for v in curves.values()])
    assert f"binomial standard error {math.sqrt(accuracy * (1 - accuracy) / 400):.3f}" in table
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_report_window_and_baseline_options(tmp_path):
    out = write_study(tmp_path / "study")
    report(out, baseline="guided", window=2)
    summary = {r["method"]: r for r in _csv(out / "summary.csv")}
    assert float(summary["grpo"]["all_negative_start"]) == pytest.approx(0.55)  # mean of the first 2 steps
    assert float(summary["grpo"]["diff_val_final"]) == pytest.approx(-statistics.fmean(BETTER[s][-1] - BASE[s][-1] for s in (1, 2, 3)))
    assert "## Against guided" in (out / "table.md").read_text()


def test_report_refuses_runs_that_are_not_paired(tmp_path):
    out = write_study(tmp_path / "wrong_seed")
    (out / "grpo" / "seed9").mkdir()
    write_run(out / "guided" / "seed5", [0.5, 0.6], [0.5, 0.5], seed=6)
    with pytest.raises(ValueError, match="seed=6, but its folder says seed 5"):
        report(out)
    other = write_study(tmp_path / "other_data")
    write_run(other / "guided" / "seed7", [0.5, 0.6, 0.6, 0.6], NEGATIVE["guided"], data_seed=2)
    with pytest.raises(ValueError, match="runs differ in data"):
        report(other)
    with pytest.raises(ValueError, match="no complete run"):
        report(tmp_path / "wrong_seed" / "grpo")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report(tmp_path / "nowhere")


def test_run_directories_are_skipped_resumed_or_restarted(tmp_path):
    done = write_run(tmp_path / "a" / "seed1", [0.5, 0.6], [0.5, 0.4])
    assert prepare_run_dir(done, max_steps=2) == "done"
    assert prepare_run_dir(done, max_steps=3) == "start"  # short of its steps and no checkpoint: moved aside
    assert not done.exists() and (tmp_path / "a" / "seed1.partial1" / "metrics.csv").is_file()
    write_run(done, [0.5, 0.6], [0.5, 0.4])
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert prepare_run_dir(done, max_steps=3) == "resume"
    assert prepare_run_dir(tmp_path / "a" / "seed2", max_steps=3) == "start"  # nothing there yet
    read = read_study(tmp_path)[0]  # the moved-aside run is not read as a seed
    assert set(read["a"]) == {1}


def _csv(file: Path) -> list[dict]:
    import csv

    with file.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---- the command, end to end -------------------------------------------------------------------------
TINY_RUN = ["max_steps=2", "val_every=1", "algorithm.prompts_per_step=2", "rollout.num_generations=2", "data.val_size=8",
            "rollout.max_new_tokens=48", "export_policy=false"]


def compare(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rlvr.compare", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_study_command_runs_reports_and_skips_finished_runs(tmp_path):
    args = ["--out", "study", "--methods", "grpo,sgpo", "--seeds", "1,2", "--jobs", "2", *TINY_RUN]
    first = compare(tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "study"
    assert "4 job(s), 2 at a time" in first.stdout
    for method in ("grpo", "sgpo"):
        for seed in (1, 2):
            run = out / method / f"seed{seed}"
            assert (run / "checkpoints" / "last.ckpt").is_file() and "ckpt_path=auto" in (run / "compare.log").read_text()
            assert OmegaConf.load(run / ".hydra" / "config.yaml").seed == seed
    table = (out / "table.md").read_text()
    assert "| grpo | 2 |" in table and "| sgpo | 2 |" in table and "## Against grpo" in table
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    metrics = (out / "grpo" / "seed1" / "metrics.csv").read_text()

    again = compare(tmp_path, *args)  # a rerun of the same command: nothing left to train
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is finished (2 steps): skipped") == 4 and "0 job(s)" in again.stdout
    assert (out / "grpo" / "seed1" / "metrics.csv").read_text() == metrics

    refused = compare(tmp_path, "--out", "study", "--methods", "grpo", "--seeds", "1", *TINY_RUN[:-1])
    assert refused.returncode == 2 and "not comparable" in refused.stderr


@pytest.mark.slow
def test_study_command_through_a_hydra_launcher(tmp_path):
    """--launcher: one multirun per method, its seeds swept into <out>/<method>/seed<s> (basic: this machine)."""
    result = compare(tmp_path, "--out", "study", "--methods", "grpo", "--seeds", "1,2", "--launcher", "basic", *TINY_RUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for seed in (1, 2):
        assert OmegaConf.load(tmp_path / "study" / "grpo" / f"seed{seed}" / ".hydra" / "config.yaml").seed == seed
    assert "| grpo | 2 |" in (tmp_path / "study" / "table.md").read_text()


def test_launcher_settings_are_checked_with_the_launcher_picked():
    study = select(load_study(), ["grpo"], [1], ["hydra.launcher.partition=gpu", "max_steps=7"])
    assert steps_per_method(study, "slurm") == {"grpo": 7}
    with pytest.raises(ValueError, match="method grpo .*Could not override 'hydra.launcher.partition'"):
        steps_per_method(study)  # the basic launcher has no partition: named before any run starts


def test_band_is_mean_and_sd_at_the_steps_every_seed_has(tmp_path):
    steps, mean, low, high = band([([0, 1, 2], [0.1, 0.2, 0.3]), ([0, 2], [0.3, 0.5])])
    assert steps == [0, 2] and mean == pytest.approx([0.2, 0.4])
    spread = statistics.stdev([0.1, 0.3])
    assert low == pytest.approx([0.2 - spread, 0.4 - spread]) and high == pytest.approx([0.2 + spread, 0.4 + spread])
    assert band([([0, 5], [0.5, 0.6])])[2:] == ([0.5, 0.6], [0.5, 0.6])  # one seed: no band
    out = plot_bands([("val", {"a": band([([0, 5], [0.5, 0.6])])})], tmp_path / "bands.png", "1 seed")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="at least one panel"):
        plot_bands([], tmp_path / "none.png")
