"""README.md holds exactly two set-up commands, and .ci/run runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_two_setup_commands_and_ci_runs_the_test_one():
    commands = setup_commands()
    assert len(commands) == 2
    train, tests = commands
    assert train.startswith("python3 -m venv") and train.endswith("policyopt train")
    assert "pip install torch==2.13.0 &&" in train and "pip install torch==2.13.0 &&" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
