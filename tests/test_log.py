"""The library logger (-v/-q on every command, quiet workers under torchrun) and the one table formatter."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from test_prepare import poem_works, write_json

from st_poetry.cli import main
from st_poetry.core import log
from st_poetry.core.tables import display_width, format_table

SUMMARY = "corpus 32 unique lines"  # the last line of prepare's summary on the fixture poems
EMPTY_EVAL = "warning: the eval split is empty"


@pytest.fixture(autouse=True)
def default_verbosity():
    """Each test starts and ends at the default, as a fresh process does."""
    log.set_verbosity(log.DEFAULT_LEVEL)
    yield
    log.set_verbosity(log.DEFAULT_LEVEL)


def run_prepare(tmp_path, capsys, *flags: str, eval_fraction: str = "0.3") -> tuple[str, str]:
    works = write_json(tmp_path / "w.json", poem_works())
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    main(["prepare", *flags, "--works", str(works), "--out", str(out), "--eval-fraction", eval_fraction])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_by_default_the_summary_and_warnings_go_to_stderr(tmp_path, capsys):
    out, err = run_prepare(tmp_path, capsys, eval_fraction="0")
    assert out == ""  # stdout is for a command's result (search hits, --help)
    assert SUMMARY in err and "reading" in err and f"\n{EMPTY_EVAL}" in err
    assert "debug:" not in err


def test_quiet_keeps_only_warnings_and_twice_quiet_only_errors(tmp_path, capsys):
    out, err = run_prepare(tmp_path, capsys, "-q", eval_fraction="0")
    assert out == "" and SUMMARY not in err and "reading" not in err  # no summary, no progress bar
    assert err.startswith(EMPTY_EVAL) and len(err.splitlines()) == 1

    assert run_prepare(tmp_path, capsys, "-qq", eval_fraction="0") == ("", "")
    assert run_prepare(tmp_path, capsys, "--quiet", "--quiet", eval_fraction="0") == ("", "")


def test_quiet_leaves_the_one_line_error_as_it_was(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-qq", "prepare", "--works", str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --works: no such file or folder: {tmp_path / 'nope.json'}\n"


def test_verbose_shows_debug_lines(tmp_path, capsys):
    _, err = run_prepare(tmp_path, capsys, "-v")
    assert f"debug: reading {tmp_path / 'w.json'} as works" in err
    assert "debug: writing " in err and " is complete" in err  # core.files, through the same logger
    assert SUMMARY in err
    _, err = run_prepare(tmp_path, capsys, "--verbose")
    assert "debug: reading" in err


def test_a_worker_other_than_the_first_logs_warnings_only(tmp_path, capsys, monkeypatch):
    """Under torchrun every process runs the stage: only RANK 0 says what it does."""
    monkeypatch.setenv("RANK", "1")
    out, err = run_prepare(tmp_path, capsys, "-v", eval_fraction="0")
    assert out == "" and err.startswith(EMPTY_EVAL) and len(err.splitlines()) == 1  # no bar, no summary, no debug
    monkeypatch.setenv("RANK", "0")
    assert SUMMARY in run_prepare(tmp_path, capsys)[1]


@pytest.mark.parametrize(
    ("argv", "count", "rest"),
    [
        (["-v", "prepare", "--out", "x"], 1, ["prepare", "--out", "x"]),
        (["search", "-vv", "-q", "床前明月光"], 1, ["search", "床前明月光"]),
        (["mine", "-qq", "--quiet"], -3, ["mine"]),
        (["search", "--", "-v", "-q"], 0, ["search", "--", "-v", "-q"]),  # after --: queries, kept
        (["train", "-vq", "--verbosity"], 0, ["train", "-vq", "--verbosity"]),  # not ours
    ],
)
def test_the_verbosity_flags_are_taken_anywhere_before_a_double_dash(argv, count, rest):
    assert log.split_verbosity(argv) == (count, rest)


def test_a_commands_help_still_works_after_a_verbosity_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "mine", "--help"])
    assert exit_info.value.code == 0 and "--num-negatives" in capsys.readouterr().out


def test_quiet_silences_the_libraries_once_imported_and_the_default_gives_their_settings_back():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    log.set_verbosity(logging.WARNING)
    assert hf_logging.get_verbosity() == logging.ERROR and not hf_logging.is_progress_bar_enabled()
    assert logging.getLogger("sentence_transformers").getEffectiveLevel() == logging.ERROR  # its encode bars go
    log.set_verbosity(log.DEFAULT_LEVEL)
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (level, bars)
    assert logging.getLogger("sentence_transformers").level == logging.NOTSET


def test_a_stage_that_imports_transformers_after_the_flags_were_read_gets_them_too():
    """The CLI reads -q before any stage imports transformers, which sets its own level on import."""
    code = (
        "import logging; from st_poetry.core import log; log.set_verbosity(logging.WARNING); "
        "import st_poetry.core.modeling; from transformers.utils import logging as hf; "
        "print(hf.get_verbosity(), hf.is_progress_bar_enabled())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(logging.ERROR), "False"]


def test_a_quiet_run_of_the_real_command_prints_nothing(tmp_path):
    works = write_json(tmp_path / "w.json", poem_works())
    command = [sys.executable, "-m", "st_poetry", "prepare", "--works", str(works), "--out", str(tmp_path / "out")]
    loud = subprocess.run(command, capture_output=True, text=True, check=True)
    assert loud.stdout == "" and SUMMARY in loud.stderr
    quiet = subprocess.run([*command, "-q"], capture_output=True, text=True, check=True)
    assert (quiet.stdout, quiet.stderr) == ("", "")


def test_the_table_aligns_chinese_by_display_width_and_numbers_to_the_right():
    rows = [["床前明月光", "李白", 0.5], ["abc", "王之涣", "12.25"]]
    lines = format_table(["line", "author", "score"], rows, align="llr").splitlines()
    assert lines == [
        "line        author  score",
        "床前明月光  李白      0.5",
        "abc         王之涣  12.25",
    ]
    assert {display_width(line) for line in lines} == {25}
    assert display_width("床前明月光，") == 12 and display_width("abc") == 3


def test_the_table_pads_short_rows_indents_and_writes_markdown():
    assert format_table(None, [["a", "1"], ["bb"]], align="lr", indent="  ") == "  a   1\n  bb"
    assert format_table(["model", "R@1"], [["静夜思", "0.5000"]], align="lr", markdown=True).splitlines() == [
        "| model  |    R@1 |",
        "| ------ | -----: |",
        "| 静夜思 | 0.5000 |",
    ]
    with pytest.raises(ValueError, match="l or r"):
        format_table(["a"], [["b"]], align="c")


@pytest.mark.parametrize("flags", [[], ["-q"], ["-qq"], ["-v"], ["-vv"]])
def test_the_verbosity_a_command_passes_on_is_the_one_it_was_given(flags):
    """The pipeline runs each stage as its own command with these flags."""
    log.apply_cli_verbosity(flags)
    assert log.verbosity_flags() == flags
