"""The front door and the documentation site: README's example runs, the pages stay short, the
headline is stated once and agrees with its result files, and nothing speaks of how the project
was made. (The site itself is built with warnings as errors by ``.ci/run``; every results table
is checked against ``results/`` by ``tests/test_experiments.py``.)"""
import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(rel):
  with open(os.path.join(ROOT, rel)) as f:
    return f.read()


def _pages():
  pages = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
  return sorted(os.path.relpath(p, ROOT) for p in pages
                if "/_build/" not in p and "/_autosummary/" not in p)


def test_readme_is_a_short_front_door():
  readme = _read("README.md")
  assert len(readme.splitlines()) <= 200
  # the two set-up commands, unchanged in meaning
  assert ("pip install -r requirements.txt -e . && jaxdd reproduce --preset cpu "
          "--workdir runs/cmnist-5pct") in readme
  assert "\nbash .ci/run\n" in readme
  # the headline is stated once: the paper-scale number appears in one place only
  assert readme.count("96.0 ± 0.3") == 1


def test_no_page_is_longer_than_400_lines():
  long = {p: n for p in _pages() if (n := len(_read(p).splitlines())) > 400}
  assert not long, long


def test_headline_numbers_are_the_result_files_numbers():
  """Each number of the README's headline table is read back from the file it cites."""
  head = json.loads(_read("results/headline.json"))
  paper, cpu = head["rows"]
  kde = _read("results/fidelity-paper/cpu-surrogate/table.md")
  vanilla = _read("results/fidelity-paper/paper-surrogate/table.md")
  mainjob = _read("results/main-job/comparison.md")
  assert paper[4].strip("*") in next(l for l in kde.splitlines() if "paper: uniform" in l)
  assert f"| {paper[3]} ± 0.0 |" in next(l for l in vanilla.splitlines() if "vanilla" in l)
  assert f"| dm | {cpu[3]} |" in mainjob
  assert f"| dm+kde | {cpu[4].strip('*')} |" in mainjob


_PROCESS_SPEAK = re.compile(
    r"\b(this|earlier|previous|later|that|an earlier|a later|in one) rounds?\b"
    r"|\bsessions?\b|\bissue'?s\b|\bissues? #?\d|\btickets?\b|\bhelper (agent|session)s?\b"
    r"|\b(the|common) brief\b", re.I)


def _repository_text():
  globs = ["README.md", "CHANGELOG.md", "docs/**/*.md", "docs/**/*.py", "jaxdd/**/*.py",
           "tests/**/*.py", "experiments/**/*.py", "experiments/**/*.ipynb",
           "benchmarks/**/*.py", "results/**/*.json", "results/**/*.md"]
  for g in globs:
    for path in glob.glob(os.path.join(ROOT, g), recursive=True):
      if "/_build/" in path or "/_autosummary/" in path or path == __file__:
        continue
      yield os.path.relpath(path, ROOT)


def test_nothing_speaks_of_how_the_project_was_made():
  hits = []
  for rel in _repository_text():
    for i, line in enumerate(_read(rel).splitlines(), 1):
      if _PROCESS_SPEAK.search(line):
        hits.append(f"{rel}:{i}: {line.strip()[:100]}")
  assert not hits, "\n".join(hits)


def _readme_example():
  readme = _read("README.md")
  section = readme[readme.index("## Python API"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.gate  # the README's Python example, in the 15-minute gate too
def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
  """The README's example as written, with its sizes shrunk to the smoke preset's (its
  surrogate, 2 steps, its evaluation protocol and its evaluation network's width 8)."""
  code = _readme_example()
  small = (code.replace('SurrogateConfig.preset("cpu")', 'SurrogateConfig.preset("smoke")')
           .replace("range(300)", "range(2)").replace('protocol="cpu"', 'protocol="smoke"')
           .replace("model=models.ConvNet(10),", "model=models.ConvNet(10, width=8),"))
  assert small.count("smoke") == 2 and "range(2)" in small and "width=8" in small
  monkeypatch.setenv("JAXDD_CACHE", str(tmp_path / "cache"))
  monkeypatch.chdir(tmp_path)
  exec(compile(small, "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert "overall" in out and "conflicting" in out and "worst group" in out


def test_quickstart_notebook_carries_its_outputs_for_the_site():
  """The site renders the notebook without executing it, so its outputs are stored: the figures,
  the result tables and the summary, and no error or progress-bar noise."""
  nb = json.loads(_read("experiments/notebooks/quickstart.ipynb"))
  outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
  assert sum("per-group accuracy" in "".join(o.get("data", {}).get("text/html", ""))
             for o in outputs) == 2
  assert any("NOTEBOOK_SUMMARY" in "".join(o.get("text", "")) for o in outputs)
  assert not [o for o in outputs if o["output_type"] == "error"
              or (o["output_type"] == "stream" and o["name"] == "stderr")]


_CITATION = re.compile(r'docs/(results/)?([\w-]+)\.md,?\s*(?:#\s*)?(?:\\?"([^"\\]+))?')


def test_citations_of_documentation_pages_name_pages_and_sections_that_exist():
  """Code comments cite measurements as ``docs/results/<page>.md, "<section>"``; each cited page
  exists and each quoted section is a heading of it (no citation goes stale silently)."""
  bad = []
  for rel in _repository_text():
    if not rel.endswith(".py") or rel.startswith("tests/"):
      continue
    text = _read(rel)
    for m in _CITATION.finditer(text):
      page = os.path.join("docs", m.group(1) or "", m.group(2) + ".md")
      if not os.path.exists(os.path.join(ROOT, page)):
        bad.append(f"{rel}: {page} does not exist")
        continue
      if m.group(3):
        title = re.sub(r"\s*\n\s*#?:?\s*", " ", m.group(3)).strip().lower()
        heads = [h.lower() for h in re.findall(r"^#+ (.*)$", _read(page), re.M)]
        if not any(h.startswith(title) or title.startswith(h) for h in heads):
          bad.append(f"{rel}: {page} has no section \"{m.group(3)}\"")
  assert not bad, "\n".join(bad)
