import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", *args],
                          capture_output=True, text=True)


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "validate" in proc.stdout


def test_help_and_usage_errors_do_not_load_torch():
    # Answering --help or refusing bad usage must not wait for torch and diffusers (seconds per call).
    probe = ("import sys\nfrom audit.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    for args in (["--help"], ["generate", "--help"], ["frobnicate"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert proc.stdout.strip().splitlines()[-1] == "False False", (args, proc.stdout[-300:], proc.stderr)


def test_unknown_subcommand_exits_nonzero():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "No such command" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_errors_are_one_line_naming_the_problem_and_the_help_to_read():
    for args, problem, command in ((["frobnicate"], "No such command 'frobnicate'", "rrf-audit"),
                                   (["generate"], "Missing argument 'base'", "rrf-audit generate"),
                                   (["validate", "gaussian", "--bogus"], "No such option: --bogus",
                                    "rrf-audit validate gaussian")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stdout == "", args
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert problem in proc.stderr and f"see '{command} --help'" in proc.stderr


def test_a_bare_group_prints_its_help_once():
    proc = run_cli("toy")
    assert proc.returncode == 0 and proc.stdout.count("Usage:") == 1 and "erase" in proc.stdout


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


def test_fit_device_errors_name_the_device_and_the_fix(tmp_path):
    import torch

    cases = [("tpu:0", "unknown --device 'tpu:0'"), ("mps", "not supported by fit")]
    if not torch.cuda.is_available():
        cases.append(("cuda:1", "asks for CUDA, which this machine does not have; use --device cpu"))
    for device, problem in cases:
        proc = run_cli("fit", str(tmp_path / "no-store"), "--device", device, "--out", str(tmp_path / "run"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and problem in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_non_positive_learning_rate_is_refused_before_any_work(tmp_path):
    # compare checks its settings before it generates: a typo must not cost the generation minutes.
    for args in (["compare", "toy", "toy-safe", "--fit-lr", "0", "--out", str(tmp_path / "audit")],
                 ["fit", str(tmp_path / "no-store"), "--lr", "-1", "--out", str(tmp_path / "run")]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "learning rate must be positive" in proc.stderr
    assert list(tmp_path.iterdir()) == []
