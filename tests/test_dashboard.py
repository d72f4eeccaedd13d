"""report.html: self-contained, with every section where its data exists, and rendered by headless Chromium
(Debian's `chromium`, which .ci/run installs where missing) without console errors, its tables sortable."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_report import ADALEZO_LOG, make_job, summary_for
from zorun.sweep.report import build_report
from zorun.sweep.time_to_target import Target

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Path:
    """A sweep with every diagnostic the page draws: adalezo, ldsd and pertnn jobs, a failure, a --target."""
    root = tmp_path_factory.mktemp("dashboard") / "sweep"
    for sampler, accuracies in (("uniform", (0.6, 0.8)), ("adalezo", (0.7, 0.9)), ("ldsd", (0.5, 0.85)),
                                ("pertnn", (0.55, 0.7))):
        for seed in (0, 1):
            metrics = []
            for step in range(1, 11):
                record = {"step": step, "loss": 0.7 - 0.02 * step, "wall_s": 0.3 * step, "train_s": 0.25 * step}
                if sampler == "ldsd":
                    record.update(mu_norm=0.01 * step, cos=0.001 * step if step % 5 == 0 else None)
                metrics.append(record)
                if step % 5 == 0:
                    metrics.append({"step": step, "dev": {"accuracy": accuracies[step // 5 - 1]},
                                    "wall_s": 0.3 * step, "train_s": 0.25 * step})
            extra = {"adalezo": {"adalezo.jsonl": ADALEZO_LOG},
                     "pertnn": {"pertnn.jsonl": "".join(json.dumps(
                         {"step": s, "factor": 1.1, "sigma": [1.0 + 0.01 * s, 0.9], **({"blocks": ["embed", "head"]}
                                                                                       if s == 0 else {})}) + "\n"
                         for s in range(0, 10, 2))}}.get(sampler)
            make_job(root, f"sampler={sampler},seed={seed}", [f"sampler={sampler}", f"seed={seed}"],
                     summary_for(accuracies[1], accuracies[1] - 0.05 * seed, seed, sampler), sampler=sampler,
                     metrics=metrics, extra=extra)
    make_job(root, "estimator.lr=10.0,seed=0", ["estimator.lr=10.0", "seed=0"],
             summary_for(0.5, 0.5, 0, "uniform", status="diverged", error="non-finite loss at step 3"))
    report = build_report(root, target=Target.parse("accuracy=0.8"))
    report.write()
    return report.out_dir / "report.html"


class Elements(HTMLParser):
    """Tags with their attributes, and the text of the results table's rows, from an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.rows, self._table, self._row = [], [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "tr" and self._table == "results":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self._row.append(data.strip())

    def count(self, tag: str, css: str = "") -> int:
        return sum(t == tag and css in (a.get("class") or "").split() if css else t == tag for t, a in self.tags)


def parse(text: str) -> Elements:
    elements = Elements()
    elements.feed(text)
    return elements


def test_the_page_is_self_contained_with_every_section(dashboard):
    text = dashboard.read_text()
    page = parse(text)
    assert not [a for t, a in page.tags if t in ("script", "img", "iframe") and "src" in a or t == "link"], \
        "nothing is fetched: plotly.js and the styles are inlined"
    assert page.count("div", "plotly-graph-div") == 5  # loss, time, adalezo, ldsd, pertnn
    assert {a.get("id") for t, a in page.tags if t == "table"} == {"results", "jobs", "time-to-target"}
    header, *rows = page.rows
    assert header[:6] == ["model", "task", "method", "test accuracy (%)", "std", "n"]
    assert ["tiny", "synthetic", "mezo+adalezo", "87.5 ± 3.5 (2) *", "3.5", "2"] in [row[:6] for row in rows]
    assert "Failed jobs (1)" in text and "Time to target: dev accuracy &gt;= 0.8" in text


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run "
                                              "installs it where missing)")
def test_chromium_renders_the_page_without_console_errors_and_sorts_the_table(dashboard, tmp_path):
    # sorting: the page as a user leaves it after clicking the test column's header twice (descending)
    clicked = tmp_path / "clicked.html"
    clicked.write_text(dashboard.read_text().replace("</body>", '<script>const th = document.querySelectorAll('
                                                     '"#results th")[3]; th.click(); th.click();</script></body>'))
    result = chromium("--dump-dom", clicked.as_uri(), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "the page logged to the console:\n" + "\n".join(console)
    page = parse(result.stdout)
    assert page.count("svg", "main-svg") >= 5, "plotly drew every figure"
    tests = [float(row[3].split()[0]) for row in page.rows[1:] if row[3] != "n/a"]
    assert tests == sorted(tests, reverse=True) and len(tests) == 4

    screenshot = tmp_path / "page.png"
    result = chromium(f"--screenshot={screenshot}", "--window-size=1400,2400", "--hide-scrollbars", dashboard.as_uri(),
                      tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    import matplotlib.image

    image = matplotlib.image.imread(screenshot)
    assert image.shape[:2] == (2400, 1400) and image[..., :3].std() > 0.05, "the screenshot shows a drawn page"
