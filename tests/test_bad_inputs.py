"""Bad inputs found by trying the command lines as a user would, beyond the enumerated ones (test_enumerate.py): each
is one line on stderr and exit code 2, or a run that does what the flags say; nothing outside the run folder is
touched, and no input blocks."""
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import nss
import plots
import runs
from rundir import Interrupted, run_folder

ROOT = Path(__file__).resolve().parents[1]
# a search of one step per epoch: 64 synthetic images, 32 a half, batch 32
TINY = ["--dataset", "synthetic", "--synthetic-size", "64", "--batch-size", "32", "--d-max", "4", "--w-max", "16",
        "--d-step", "2", "--w-step", "4", "--target", "6e6", "--epochs", "2", "--warmup-epochs", "1", "--no-progress"]


def one_line(proc, *words, code=2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@contextmanager
def at_most(seconds: int):
    """Fail, instead of hanging the suite, if the block takes longer (a FIFO read blocks until a writer comes)."""
    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", [".", "..", "/", "../elsewhere", "a/../../b", "two\nlines"])
def test_a_run_name_must_name_a_folder_below_out(cli_here, tmp_path, name):
    """--name '..' with --overwrite emptied the folder above --out; now such a name is refused before any folder is
    touched (no lock file left either)."""
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "runs" / "other").mkdir(parents=True)
    one_line(cli_here("nss", *TINY, "--name", name, "--overwrite"), "--name", "below --out")
    assert (tmp_path / "precious.txt").read_text() == "keep me" and (tmp_path / "runs" / "other").is_dir()
    assert not (tmp_path / "runs" / ".lock").exists() and not (tmp_path / ".lock").exists()


@pytest.mark.slow
def test_several_targets_without_a_warmup_each_run_as_alone(cli_here, tmp_path):
    """--warmup-epochs 0 with a target list: nothing to share, so no warmup folder, and each target gets the result
    it gets searched alone (a missing warmup checkpoint stopped every such run)."""
    flat = [a for a in TINY if a not in ("--warmup-epochs", "1")]
    both = cli_here("nss", *flat, "--warmup-epochs", "0", "--target", "5e6,8e6", "--name", "mt")
    assert both.returncode == 0, both.stderr
    alone = cli_here("nss", *flat, "--warmup-epochs", "0", "--target", "8e6", "--name", "alone")
    assert alone.returncode == 0, alone.stderr
    assert not (tmp_path / "runs" / "mt-warmup").exists()
    read = lambda name: json.loads((tmp_path / "runs" / name / "result.json").read_text())
    several, single = read("mt-8MF"), read("alone")
    assert several["warmup_run"] is None and several["probs"] == single["probs"]
    assert several["elite_space"] == single["elite_space"]


def test_the_last_target_flag_counts_and_flags_are_spelled_whole():
    argv, targets = nss.split_targets(["--target", "7e6,8e6", "--seed", "1", "--target=6e6"])
    assert argv == ["--seed", "1", "--target=6e6"] and targets is None
    argv, targets = nss.split_targets(["--target=6e6", "--target", "5e6,8e6"])
    assert argv == ["--target=5000000.0"] and targets == [5e6, 8e6]
    with pytest.raises(runs.RunError, match="unrecognized arguments: --targ"):
        runs.parse_config(nss.NSSConfig, ["--targ", "6e6"])


def test_ctrl_c_advice_fits_the_command_given(tmp_path):
    """After Ctrl-C, "rerun with --resume" would be refused beside --overwrite, and --reuse goes on by itself."""
    for flags, advice in ((dict(overwrite=True), "with --resume in place of --overwrite"),
                          (dict(reuse=True), "rerun the same command (--reuse goes on from it)"),
                          ({}, "rerun the same command with --resume")):
        run_dir = tmp_path / str(len(flags) and next(iter(flags)))
        with pytest.raises(Interrupted, match=advice.replace("(", r"\(").replace(")", r"\)")):
            with run_folder(run_dir, **flags) as folder:
                (folder / "checkpoint.pt").write_bytes(b"kept")
                raise KeyboardInterrupt


def test_table_inputs(cli_here, tmp_path, capsys):
    """--match '' (a traceback), a count too large for a float (a traceback), two runs for one cell (one silently
    dropped), and an output stem with a dot (written as another name, so never refused)."""
    good = {"dataset": "synthetic", "target": 4e6, "space_source": "full", "flops": 4.1e6, "deviation": 0.025,
            "samples": 7}
    for name, r in (("a", good), ("b", good), ("huge", {**good, "target": 9e6, "samples": 10 ** 400})):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "nas.json").write_text(json.dumps(r))
    one_line(cli_here("evaluate", "table", "--match", ""), "--match")
    rows = plots.table_rows(tmp_path / "runs")
    warnings = capsys.readouterr().err.strip().splitlines()
    assert [r["target"] for r in rows] == [4e6] and len(warnings) == 2, warnings
    assert any("b/nas.json" in w and "a/nas.json already gives the full cell" in w for w in warnings)
    assert any("huge/nas.json" in w and "samples" in w for w in warnings)
    made = cli_here("evaluate", "table", "--out", "tb.v2")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "tb.v2.md").is_file() and (tmp_path / "tb.v2.csv").is_file()
    one_line(cli_here("evaluate", "table", "--out", "tb.v2"), "tb.v2.md", "--overwrite")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_an_input_is_refused_not_waited_on(cli_here, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with at_most(30):
        one_line(cli_here("nas", "--quick", "--space", str(fifo)), "not a regular file")
        one_line(cli_here("nss", "--config", str(fifo)), "--config", "not a regular file")
        one_line(cli_here("evaluate", "export", "--arch", str(fifo), "--dataset", "synthetic"), "not a regular file")
        (tmp_path / "runs" / "x").mkdir(parents=True)
        os.mkfifo(tmp_path / "runs" / "x" / "nas.json")
        assert plots.table_rows(tmp_path / "runs") == []
    assert "not a regular file" in capsys.readouterr().err


def test_a_file_that_is_not_a_supernet_gets_advice_that_helps(cli_here, tmp_path):
    torch.save({"epoch": 1}, tmp_path / "checkpoint.pt")
    line = one_line(cli_here("evaluate", "score", "--supernet", str(tmp_path / "checkpoint.pt"), "--dataset",
                             "synthetic"), "is not a supernet", "evaluate.py supernet")
    assert "--overwrite" not in line


def test_a_supernet_scores_only_inside_the_space_it_was_trained_over(cli_here, tmp_path):
    """A supernet trained over a sub-space has untrained weights beyond it: scoring, ranking or exporting an
    architecture there is refused in one line, before any data is read; inside it the same supernet works."""
    from space import Arch, ExpandedSearchSpace, Space
    from supernet import SuperNet
    ess = ExpandedSearchSpace.reduced()
    inner = Space(depths=((1, 2),) * 3, widths=((1, 8),) * 3)
    torch.save({"ess": ess.to_dict(), "space": inner.to_dict(), "state": SuperNet(ess).state_dict()},
               tmp_path / "supernet.pt")
    (tmp_path / "inner.json").write_text(inner.to_json())
    small = ["--supernet", str(tmp_path / "supernet.pt"), "--dataset", "synthetic", "--synthetic-size", "64"]
    for args in (["score", "--spaces", "inner.json,full"], ["rank", "--space", "full"],
                 ["export", "--arch", Arch((1, 1, 1), (1, 1, 12)).to_json(), "--out", "net.pt"]):
        one_line(cli_here("evaluate", *args, *small), "reaches beyond", "supernet.pt was trained over", "--space")
    assert not (tmp_path / "net.pt").exists() and not list((tmp_path / "runs").glob("*/*.json"))
    done = cli_here("evaluate", "score", "--spaces", "inner.json", "--n", "3", "--calib-images", "0", "--test-images",
                    "20", *small)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("spaces", ["full,", ",full", "full,full", "full, full2"])
def test_each_space_of_spaces_is_named_once_without_blanks(cli_here, tmp_path, spaces):
    torch.save({"epoch": 1}, tmp_path / "supernet.pt")
    one_line(cli_here("evaluate", "score", "--supernet", str(tmp_path / "supernet.pt"), "--spaces", spaces), "--spaces")


def test_bench_fails_on_its_inputs_before_it_times_anything(cli_here, tmp_path):
    proc = cli_here("bench", "--quick", "--device", "cpu", "--data-dir", str(tmp_path / "nowhere"))
    line = one_line(proc, "nowhere", "--data-dir")
    assert "--dataset" not in line    # a flag that bench.py does not have
    assert proc.stdout == ""          # not one benchmark ran


@pytest.mark.parametrize("args, words", [(["99"], ["no notebook matches 99", "01_expanded_search_space"]),
                                         (["--scale", "bogus", "01"], ["--scale", "bogus"])])
def test_render_says_a_bad_input_in_one_line(cli_here, monkeypatch, args, words):
    monkeypatch.syspath_prepend(str(ROOT / "notebooks"))
    one_line(cli_here("render", *args), *words)
    monkeypatch.setenv("NSS_DEVICE", "bogus")
    one_line(cli_here("render", "--plain", "05"), "unknown device 'bogus'")


def test_a_file_where_an_output_folder_goes_is_said_so(cli_here, tmp_path):
    (tmp_path / "afile").write_text("")
    one_line(cli_here("evaluate", "export", "--arch", '{"depths": [1, 1, 1], "widths": [4, 4, 4]}', "--dataset",
                      "synthetic", "--d-max", "4", "--w-max", "16", "--d-step", "2", "--w-step", "4", "--out", "afile/m.pt"),
             "afile", "a file stands where a folder is needed")


def test_scratch_of_a_nas_json_goes_where_out_says_when_given(tmp_path, monkeypatch):
    """For a nas.json the from-scratch run goes to scratch/ beside it, unless --out (or --name) is given."""
    import scratch
    (tmp_path / "nas").mkdir()
    (tmp_path / "nas" / "nas.json").write_text(json.dumps({"arch": {"depths": [1, 1, 1], "widths": [2, 2, 2]}}))
    common = dict(dataset="synthetic", synthetic_size=64, d_max=4, w_max=16, d_step=2, w_step=4, recipe="fast",
                  epochs=1, batch_size=32, seeds=1, progress=False, arch=str(tmp_path / "nas" / "nas.json"))
    monkeypatch.chdir(tmp_path)
    scratch.run_scratch(scratch.ScratchConfig(**common))
    scratch.run_scratch(scratch.ScratchConfig(**common, out=str(tmp_path / "elsewhere")))
    assert (tmp_path / "nas" / "scratch" / "scratch.json").is_file()
    assert (tmp_path / "elsewhere" / "scratch-synthetic-s0" / "scratch.json").is_file()
