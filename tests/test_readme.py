"""The README's two quick-start commands are the ones that work: the flag file exists and CI runs the same
test command."""
import os
import re
import shlex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    return re.findall(r"```bash\n(.+?)\n```", readme.split("\n## ", 1)[0])


def test_readme_opens_with_the_two_quick_start_commands():
    assert len(quick_start_commands()) == 2


def test_the_quick_start_flag_file_exists_and_the_job_runs_run_py():
    job = quick_start_commands()[0].split(" && ")[-1]
    words = shlex.split(job)
    assert words[:2] == [".venv/bin/python", "run.py"]
    flag_files = [w.split("=", 1)[1] for w in words if w.startswith("--flagfile=")]
    assert flag_files and os.path.isfile(os.path.join(REPO, flag_files[0]))


def test_ci_runs_the_readme_test_command():
    readme_test_command = quick_start_commands()[1].split(" && ")[-1]
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci_commands = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert ci_commands[-1] == readme_test_command
