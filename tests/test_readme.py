"""The README's commands and CI agree, and its API example runs."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGES = 200  # training images the README's Python example runs on here (it says 3,000)


def readme_bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def readme_python_api_example():
    """The one ```python block of the README's "## Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)
    assert len(blocks) == 1, f"expected one python block in '## Python API', found {len(blocks)}"
    return blocks[0]


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


def test_readme_python_example_runs(monkeypatch):
    """Executes the README's Python API example as written, except that the data set is smaller:
    ``creativity_fast.data.load_dataset`` is patched to load the first 200 images of the embedded
    subset (``limit=200``), because the example's 16 samples x 20 steps of ELS over all 3,000 take
    about 2 minutes on 2 cores (about 10 s here). Everything else runs unchanged, the compiled kernel
    when it is built; the example's own comment (3,000 images in [-1, 1]) is checked on the real
    loader, and its results for shape and finiteness."""
    import creativity_fast.data

    real_load = creativity_fast.data.load_dataset
    full = real_load()
    assert full.images.shape == (3000, 1, 28, 28) and full.images.min() >= -1 and full.images.max() <= 1

    def first_images(*args, **kwargs):
        kwargs.setdefault("limit", EXAMPLE_IMAGES)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(creativity_fast.data, "load_dataset", first_images)
    namespace = {"__name__": "readme_python_api_example"}
    exec(compile(readme_python_api_example(), "README.md (## Python API)", "exec"), namespace)

    assert namespace["data"].images.shape == (EXAMPLE_IMAGES, 1, 28, 28)
    x0_hat, stats, samples = namespace["x0_hat"], namespace["stats"], namespace["samples"]
    assert x0_hat.shape == (8, 1, 28, 28) and torch.isfinite(x0_hat).all()
    assert stats.x0_hat.shape == (8, 1, 28, 28) and stats.lse.shape == (8, 28, 28)
    assert stats.argmax.shape == (8, 28, 28, 2)
    assert samples.shape == (16, 1, 28, 28) and torch.isfinite(samples).all()


def test_docs_have_no_control_characters_from_unescaped_tex():
    """A TeX macro written into a non-raw Python string loses its backslash to an escape
    (`\\beta` -> backspace + "eta", `\\frac` -> form feed, `\\times` -> tab, `\\rVert` and
    `\\ne` -> a line break); the first three leave control characters behind."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                 *sorted((ROOT / "bench").glob("*.md"))]:
        text = path.read_text()
        bad = sorted({hex(ord(ch)) for ch in text if ord(ch) < 32 and ch != "\n"})
        assert not bad, f"{path.relative_to(ROOT)} contains control characters {bad}"
        for broken in ("\nVert", "\nangle", "\nabla"):
            assert broken not in text, f"{path.relative_to(ROOT)}: {broken!r} is a TeX macro split by an escape"
