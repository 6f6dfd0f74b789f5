"""The README's examples run and print what they say."""


def test_readme_python_example_prints_what_it_says(capsys):
    """Item 21: the README's first Python example is seeded; its printed numbers match its comments."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(import torch\nfrom multilevel_em import Ladder.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    first = capsys.readouterr().out.splitlines()[0]
    promised = re.search(r"ml\.evaluations\)  # (.*)", code).group(1)
    assert first == promised
