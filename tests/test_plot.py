from pathlib import Path

import pytest

from rlvr.metrics import read_metrics, series
from rlvr.plot import DEFAULT_METRICS, main, plot_runs, present_metrics, read_curves, run_labels, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir: Path, with_guidance: bool) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it: one row per logging call, empty cells elsewhere."""
    run_dir.mkdir(parents=True)
    header = ["epoch", "step", "train/reward", "train/accuracy", "train/all_negative_frac", "train/completion_length",
              "train/entropy", "val/accuracy"] + (["guidance/length"] if with_guidance else [])
    rows = []
    for step in range(6):
        row = ["0", str(step), str(0.1 * step), str(0.1 * step), str(1 - 0.1 * step), str(20 + step), "1.5", ""]
        rows.append(row + ([str(0.5 - 0.1 * step)] if with_guidance else []))
        if step % 3 == 2:  # validation rows carry only val/accuracy
            rows.append(["0", str(step), "", "", "", "", "", str(step / 10)] + ([""] if with_guidance else []))
    (run_dir / "metrics.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return run_dir


def test_read_curves_keeps_only_logged_cells(tmp_path):
    metrics = read_curves(write_metrics(tmp_path / "run", with_guidance=False))
    assert metrics["val/accuracy"] == [(2.0, 0.2), (5.0, 0.5)]
    assert [s for s, _ in metrics["train/reward"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert metrics["train/completion_length"][-1] == (5.0, 25.0)
    assert "step" not in metrics and "guidance/length" not in metrics


def test_read_metrics_rows_hold_their_logged_cells_as_floats(tmp_path):
    rows = read_metrics(write_metrics(tmp_path / "run", with_guidance=True))
    assert len(rows) == 8 and [r["step"] for r in rows[:4]] == [0.0, 1.0, 2.0, 2.0]
    assert rows[3] == {"epoch": 0.0, "step": 2.0, "val/accuracy": 0.2}  # a validation row: its empty cells are left out
    assert "val/accuracy" not in rows[0] and rows[0]["train/completion_length"] == 20.0
    assert series(rows, "val/accuracy") == [0.2, 0.5]
    assert series(rows, "guidance/length") == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.0], abs=1e-12)
    assert series(rows, "train/kl") == []


def test_present_metrics_takes_what_any_run_logged(tmp_path):
    plain = read_curves(write_metrics(tmp_path / "none", with_guidance=False))
    guided = read_curves(write_metrics(tmp_path / "adaptive", with_guidance=True))
    columns = [c for c, _ in present_metrics([plain, guided], DEFAULT_METRICS)]
    assert columns == ["train/reward", "train/accuracy", "val/accuracy", "train/all_negative_frac",
                       "train/completion_length", "train/entropy", "guidance/length"]  # no KL logged
    assert "guidance/length" not in [c for c, _ in present_metrics([plain], DEFAULT_METRICS)]


def test_plot_one_run_writes_png(tmp_path):
    run = write_metrics(tmp_path / "run", with_guidance=False)
    out = plot_runs([run], tmp_path / "figs" / "curves.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_cli_overlays_runs(tmp_path, capsys):
    runs = [write_metrics(tmp_path / name, with_guidance=name != "none") for name in ("none", "fixed", "adaptive")]
    main([str(r) for r in runs] + ["--out", str(tmp_path / "compare.png"), "--smooth", "2"])
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_SIGNATURE
    main([str(r) for r in runs])  # default: curves.png in the runs' common parent
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "wrote" in capsys.readouterr().out


def test_cli_single_run_default_output_and_chosen_metric(tmp_path):
    run = write_metrics(tmp_path / "run", with_guidance=False)
    main([str(run), "--metric", "train/entropy"])
    assert (run / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_missing_metrics_csv_is_an_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no metrics.csv in"):
        plot_runs([tmp_path], tmp_path / "x.png")
    with pytest.raises(SystemExit):  # the command line prints the message instead of a traceback
        main([str(tmp_path)])
    assert "no metrics.csv in" in capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()


def test_bad_files_are_errors(tmp_path):
    run = write_metrics(tmp_path / "run", with_guidance=False)
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_runs([run], tmp_path / "x.png", metrics=[("train/kl", "KL")])
    (run / "metrics.csv").write_text("step,train/reward\n0,0.5\n1,oops\n")
    with pytest.raises(ValueError, match=r"line 3: column 'train/reward' is not a number: 'oops'"):
        read_metrics(run)
    (run / "metrics.csv").write_text("epoch,train/reward\n0,0.5\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        read_metrics(run)


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([1.0, 5.0, 3.0], 1) == [1.0, 5.0, 3.0]
    assert smooth([3.0, 6.0, 9.0, 0.0], 3) == [3.0, 4.5, 6.0, 5.0]
    with pytest.raises(ValueError, match="window must be >= 1"):
        smooth([1.0], 0)


def test_run_labels_fall_back_to_paths_for_equal_names(tmp_path):
    a, b, c = tmp_path / "x" / "policy", tmp_path / "y" / "policy", tmp_path / "z"
    assert run_labels([a, b, c]) == [str(a), str(b), "z"]
