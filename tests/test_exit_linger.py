"""A finished script exits when done, or says why not (issue 28, item 2): when a Prometheus
was scraping, the exit waits for its next scrape only (the one that reads
``gradwatch_run_finished 1``), says so in one line with how to skip it, and Ctrl-C skips it
cleanly; ``prometheus_linger=0`` or no scraper: no wait, no line."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from .helpers import sample, samples

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[1]
WAITING = "gradwatch: waiting up to"
SKIP = "Ctrl-C, or prometheus_linger=0, skips the wait"
SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import lightning.pytorch as pl
from gradwatch import TrainingDiagnostics
from tests.lightning_models import regression_module

diagnostics = TrainingDiagnostics(prometheus_port=0, tensorboard=False{linger})

class Paced(pl.Callback):
    def on_train_start(self, trainer, module):
        print(diagnostics.prometheus_url, flush=True)

    def on_train_batch_end(self, *args):
        time.sleep({pace})  # a few scrapes happen during the fit

    def on_train_end(self, trainer, module):
        print("training ended", flush=True)
        sys.stdin.readline()  # the test stops its scraper before the clean end is marked

pl.Trainer(max_steps={steps}, logger=False, callbacks=[diagnostics, Paced()],
           enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
           accelerator="cpu").fit(regression_module())
print("fit returned", flush=True)
"""


class Script:
    """The script in a subprocess, a scraper of its /metrics every ``interval`` seconds
    while ``scraping`` is set, and its output lines as they come."""

    def __init__(self, tmp_path: Path, linger: float | None, interval: float, steps: int = 80,
                 pace: float = 0.05) -> None:
        path = tmp_path / "train.py"
        # the default linger is not passed: the script runs as any user's does
        path.write_text(SCRIPT.format(root=str(ROOT), pace=pace, steps=steps, linger=(
            "" if linger is None else f", prometheus_linger={linger}")))
        self.process = subprocess.Popen([sys.executable, str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, cwd=tmp_path)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.finished_values: list[float] = []
        self.interval = interval
        self.waiting = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.process.stdout.readline().strip()
        self._scraper = threading.Thread(target=self._scrape, daemon=True)
        self._stop = threading.Event()
        self._scraper.start()
        # at the end of training, before the clean end is marked: no scrape from now on
        assert self.process.stdout.readline().strip() == "training ended", self.err()
        self._stop.set()
        self._scraper.join()
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def err(self) -> str:
        return "".join(self.stderr)[-2000:]

    def _read(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)
            if line.startswith(WAITING):
                self.waiting.set()

    def _scrape(self) -> None:
        while not self._stop.wait(self.interval if self.finished_values else 0):
            self.scrape()

    def scrape(self) -> None:
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return  # it stopped serving
        self.finished_values.append(sample(samples(text), "gradwatch_run_finished"))

    def wait(self) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=120)
        return self.process.returncode, "".join(self.stderr)


def test_with_a_scraper_the_exit_waits_for_its_next_scrape_and_says_so(tmp_path):
    # scrapes 3 s apart, the last one before the clean end: the exit waits for the next
    script = Script(tmp_path, linger=None, interval=3.0)
    assert script.waiting.wait(60), script.err()
    assert script.finished_values == [0.0] * len(script.finished_values)
    script.scrape()  # Prometheus's next scrape: it reads the clean end, the script exits
    code, stderr = script.wait()
    assert code == 0, stderr[-2000:]
    assert script.finished_values[-1] == 1.0
    lines = [line for line in stderr.splitlines() if line.startswith(WAITING)]
    assert len(lines) == 1 and lines[0].endswith(SKIP), stderr[-2000:]


def test_ctrl_c_skips_the_wait_cleanly(tmp_path):
    script = Script(tmp_path, linger=None, interval=3.0)
    assert script.waiting.wait(60), script.err()
    script.process.send_signal(signal.SIGINT)
    code, stderr = script.wait()
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    assert 1.0 not in script.finished_values  # it did not wait for that scrape


def test_prometheus_linger_0_exits_without_waiting_or_a_line(tmp_path):
    script = Script(tmp_path, linger=0, interval=0.2, steps=20)
    code, stderr = script.wait()
    assert code == 0, stderr[-2000:]
    assert WAITING not in stderr
    assert len(script.finished_values) >= 2 and 1.0 not in script.finished_values
