import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", *args],
                          capture_output=True, text=True)


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "validate" in proc.stdout


def test_unknown_subcommand_exits_nonzero():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "No such command" in proc.stderr and "Traceback" not in proc.stderr


def test_foreign_output_directory_is_refused_in_one_line_and_kept(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_cli("validate", "gaussian", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "x").write_text("")
    proc = run_cli("validate", "gaussian", "--quick", "--out", str(tmp_path), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr
