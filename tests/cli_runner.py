"""Run the command line in this process, as the tests that check its messages do."""

from __future__ import annotations

from llama2_colab import cli


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `python -m llama2_colab ARGV` in this process; return (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err
