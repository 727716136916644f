"""tools.privacy_realism_plot: one point per run from its report, runs without figures named."""

import json

import pytest

from tools import privacy_realism_plot as plot_tool


def _report(workdir, anonymized_fid=None, match=0.04):
    report = {"anonymized": {"identity_match_rate": match}}
    if anonymized_fid is None:
        report["realism"] = {"missing": "no Inception weights"}
    else:
        report["realism"] = {"fid": {"anonymized": anonymized_fid, "blurred_reference": 80.0,
                                     "recovered_wrong_password": 60.0}}  # fmt: skip
    (workdir / "eval").mkdir(parents=True)
    (workdir / "eval" / "report.json").write_text(json.dumps(report))
    return str(workdir)


def test_points_are_relative_to_the_blurred_reference(tmp_path, capsys):
    good = _report(tmp_path / "good", anonymized_fid=40.0, match=0.03)
    bare = _report(tmp_path / "bare")
    out = tmp_path / "plot.png"
    argv = ["--run", f"good={good}", "--run", f"bare={bare}", "--run", f"gone={tmp_path / 'x'}"]
    assert plot_tool.main([*argv, "--default", "good", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    captured = capsys.readouterr()
    assert "FID/blurred 0.500  match 0.030  wrong-password FID/blurred 0.750" in captured.out
    assert "left out bare" in captured.err and "no Inception weights" in captured.err
    assert "left out gone" in captured.err


def test_nothing_to_plot_and_bad_arguments_are_errors(tmp_path):
    bare = _report(tmp_path / "bare")
    assert plot_tool.main(["--run", f"bare={bare}", "--out", str(tmp_path / "p.png")]) == 1
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(SystemExit):
        plot_tool.main(["--run", f"a={bare}", "--default", "b", "--out", "p.png"])
    with pytest.raises(SystemExit):
        plot_tool.main(["--run", "no-equals-sign", "--out", "p.png"])


def test_saved_points_plot_again_without_their_workdirs(tmp_path, capsys):
    good = _report(tmp_path / "good", anonymized_fid=40.0, match=0.03)
    saved, out = tmp_path / "points.json", tmp_path / "plot.png"
    argv = ["--run", f"good={good}", "--out", str(out), "--save-points", str(saved)]
    assert plot_tool.main(argv) == 0
    newer = _report(tmp_path / "newer", anonymized_fid=80.0, match=0.01)
    capsys.readouterr()
    argv = ["--points", str(saved), "--run", f"newer={newer}", "--default", "good"]
    assert plot_tool.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "good         anonymized FID/blurred 0.500  match 0.030" in printed
    assert "newer        anonymized FID/blurred 1.000  match 0.010" in printed


def test_a_bad_points_file_is_named(tmp_path, capsys):
    bad = tmp_path / "points.json"
    bad.write_text(json.dumps({"e1": {"anonymized": {}}}))
    assert plot_tool.main(["--points", str(bad), "--out", str(tmp_path / "p.png")]) == 2
    assert str(bad) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_tool.main(["--out", str(tmp_path / "p.png")])
