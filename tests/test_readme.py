"""The README's Python example runs as written (with fewer epochs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    section = text[text.index("## Ten lines of Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "epochs=30" in code
    code = code.replace("epochs=30", "epochs=1").replace("n_cells=3000", "n_cells=600")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["ate"].shape == (1, 500)
    assert scope["cells"].n_obs == 200
    assert scope["cf"].n_obs == scope["data"].n_cells


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    block = text[text.index("## Set up and run"):text.index("## The causal story")]
    commands = re.findall(r"```bash\n(.*?)```", block, re.S)
    assert len(commands) == 2
    assert "cradle-pyro demo" in commands[0] and 'pip install torch==2.13.0 -e ".[dev]"' in commands[0]
    assert "python -m pytest -q" in commands[1]
    assert "python -m pytest -q" in (README.parent / ".ci" / "run").read_text()
