"""Monitoring never hurts training: every exporter and receiver broken at once, and the
training itself failing. Real Lightning runs, real sockets and servers."""

from __future__ import annotations

import errno
import http.server
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest
import torch

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import read_scalars, scrape
from .lightning_models import lightning, regression_module, trainer
from .ops_servers import wait_until


class Silent:
    """Accepts connections and never answers (a stuck server)."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self):
        self.socket.close()
        for conn in self.held:
            conn.close()


class Failing(http.server.ThreadingHTTPServer):
    """Answers every request with HTTP 500, counting them."""

    def __init__(self):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(500)
                self.end_headers()

            do_PUT = do_DELETE = do_POST

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def train(callbacks, tmp_path, steps=40, pace=0.02, zero_init=True, spike_at=None,
          connections=()):
    """Train a small model (zero-initialised: the init audit alerts at once; a batch scaled
    up at ``spike_at``: explosion alerts then); returns its weights and the addresses that
    the training thread connected to from the training's start to its last step's end (of
    ``connections``, the fixture's list)."""
    pl = lightning()
    steps_span = {}

    class Pace(pl.Callback):
        def on_train_start(self, *args):
            steps_span.update(thread=threading.get_ident(), start=len(connections))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == spike_at:
                batch[1].mul_(1e4)  # wild targets: a loss and gradient spike

        def on_train_batch_end(self, *args):
            steps_span["end"] = len(connections)
            # not a wait: the step's own duration, long enough for the exporters' threads to
            # try many times during the run
            time.sleep(pace)

    torch.manual_seed(0)
    module = regression_module(optimizer="adam")
    if zero_init:
        torch.nn.init.zeros_(module.net[2].weight)
    trainer(callbacks=[*callbacks, Pace()], root=str(tmp_path), max_steps=steps,
            logger=False).fit(module)
    during = connections[steps_span["start"]:steps_span["end"]]
    return module.state_dict(), [address for thread, address in during
                                 if thread == steps_span["thread"]]


class Dying(Failing):
    """Answers 200 until ``kill()``, then is gone (a receiver that dies mid-run)."""

    def __init__(self):
        super().__init__()
        self.RequestHandlerClass.do_POST = _ok

    def kill(self):
        self.close()


def _ok(handler):
    handler.server.requests += 1
    handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
    handler.send_response(200)
    handler.end_headers()


@pytest.mark.training
@pytest.mark.parametrize("setup", ["stuck-push/500-alertmanager/refused-webhook/no-tensorboard",
                                   "500-push/stuck-alertmanager/webhook-dies-mid-run"])
def test_every_exporter_broken_at_once(setup, tmp_path, caplog, connections):
    silent, failing, dying = Silent(), Failing(), Dying()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    first = setup.startswith("stuck-push")
    options = dict(every_n_steps=5, prometheus_port=0, push_interval=0.1)  # never scraped
    if first:
        options.update(pushgateway_url=silent.url, alertmanager_url=failing.url,
                       webhook_url=dead_url(), tensorboard_dir=str(blocker / "tb"))
    else:
        options.update(pushgateway_url=failing.url, alertmanager_url=silent.url,
                       webhook_url=dying.url, tensorboard=False)
    pl = lightning()

    class KillWebhook(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 10:
                dying.kill()

    try:
        bare, _ = train([], tmp_path / "bare", spike_at=20)
        diagnostics = TrainingDiagnostics(**options)
        with caplog.at_level(logging.WARNING, logger="gradwatch"):
            watched, opened_by_steps = train([diagnostics, KillWebhook()],
                                             tmp_path / "watched", spike_at=20,
                                             connections=connections)
    finally:
        for server in (silent, failing, dying):
            server.close()
    # training unaffected: bit-identical weights
    for name in bare:
        assert torch.equal(bare[name], watched[name]), name
    # no network wait in the training steps: their thread opened no connection, gradwatch's
    # threads did
    assert connections and opened_by_steps == []
    assert len(silent.held) >= 1 and failing.requests >= 2  # they were really tried
    alerts = {a.name for a in diagnostics.engine.history}
    assert {"SymmetricInitialization", "GradientExplosion"} <= alerts  # there was traffic
    # each failure reported once, not once per attempt
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    repeated = {m: n for m, n in Counter(messages).items() if n > 1}
    assert repeated == {}, repeated
    unreachable = [m for m in messages if "unreachable" in m]
    assert len(unreachable) == 2, unreachable  # Alertmanager and the webhook, once each
    assert any("Pushgateway" in m for m in messages)
    if first:
        assert any("TensorBoard export off" in m for m in messages)
    else:
        assert dying.requests >= 1  # it worked before it died


@pytest.mark.training
def test_alerts_queued_while_alertmanager_is_down_arrive_when_it_is_back(tmp_path, caplog):
    """The receiver comes up during the run: alerts raised before are delivered."""
    received = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = None

    def start_later():  # the receiver comes up once a delivery was refused
        nonlocal server
        wait_until(lambda: any("unreachable" in r.getMessage() for r in caplog.records), 60,
                   "a refused delivery")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        server.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    diagnostics = TrainingDiagnostics(every_n_steps=5, webhook_url=f"http://127.0.0.1:{port}",
                                      tensorboard=False)
    train([diagnostics], tmp_path, steps=60, pace=0.02)  # the init audit alerts at step 0
    try:
        wait_until(lambda: any(b"SymmetricInitialization" in body for body in received), 10,
                   "the alert raised before the receiver was up")
    finally:
        if server:
            server.shutdown()


@pytest.mark.training
def test_a_failing_training_step_propagates_unchanged_and_everything_shuts_down(tmp_path):
    pl = lightning()
    failure = RuntimeError("boom at step 6")
    seen = {}

    class Explode(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 6:
                seen["url"] = diagnostics.prometheus_url
                seen["threads"] = {t.name for t in threading.enumerate()}
                raise failure

    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0,
                                      tensorboard_dir=str(tmp_path / "tb"))
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError) as raised:
        trainer(callbacks=[diagnostics, Explode()], root=str(tmp_path), max_steps=20,
                logger=False).fit(regression_module())
    assert raised.value is failure  # the original exception, unchanged
    assert "gradwatch-export" in seen["threads"]
    # TensorBoard flushed: every step up to the failure is on disk
    assert [s for s, _ in read_scalars(str(tmp_path / "tb"))["gradwatch/loss"]] == list(range(6))
    # the HTTP server and gradwatch's threads are gone
    with pytest.raises(OSError):
        scrape(seen["url"])
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("gradwatch")
                            and t.name not in before], 5, "gradwatch's threads to end")


@pytest.mark.training
def test_stop_on_nonfinite_stops_training_cleanly(tmp_path):
    pl = lightning()

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                batch[0][0, 0] = float("nan")

    diagnostics = TrainingDiagnostics(every_n_steps=1, stop_on=("NonFiniteValues",),
                                      tensorboard=False)
    run = trainer(callbacks=[diagnostics, Poison()], root=str(tmp_path), max_steps=50,
                  logger=False)
    run.fit(regression_module())
    assert run.global_step == 4  # stopped right after the poisoned step
    (alert,) = [a for a in diagnostics.engine.history if a.name == "NonFiniteValues"]
    assert alert.step == 3 and alert.origin_exact


@pytest.mark.unit
def test_bad_stop_on_names_fail_at_construction():
    with pytest.raises(ValueError, match="stop_on"):
        TrainingDiagnostics(stop_on=("NaNs",))


@pytest.mark.training
def test_keyboard_interrupt_ends_as_without_gradwatch_and_shuts_down(tmp_path):
    """Lightning turns Ctrl-C into a graceful shutdown and SystemExit(1); with gradwatch the
    user sees exactly the same, and gradwatch's endpoint and threads are gone."""
    pl = lightning()

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    def outcome(callbacks):
        with pytest.raises(BaseException) as raised:
            trainer(callbacks=[*callbacks, CtrlC()], root=str(tmp_path), max_steps=10,
                    logger=False).fit(regression_module())
        return type(raised.value), raised.value.args

    diagnostics = TrainingDiagnostics(every_n_steps=2, prometheus_port=0,
                                      tensorboard_dir=str(tmp_path / "tb"))
    assert outcome([diagnostics]) == outcome([]) == (SystemExit, (1,))
    assert diagnostics.monitor is None  # shut down
    assert not [t for t in threading.enumerate() if t.name.startswith("gradwatch")]
    assert [s for s, _ in read_scalars(str(tmp_path / "tb"))["gradwatch/loss"]] == [0, 1, 2]


@pytest.mark.training
def test_port_taken_with_warn_trains_unchanged_without_the_endpoint(tmp_path, caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        bare, _ = train([], tmp_path / "bare", steps=10, pace=0, zero_init=False)
        diagnostics = TrainingDiagnostics(prometheus_port=port, port_in_use="warn",
                                          tensorboard_dir=str(tmp_path / "tb"))
        with caplog.at_level(logging.WARNING, logger="gradwatch"):
            watched, _ = train([diagnostics], tmp_path / "watched", steps=10, pace=0,
                               zero_init=False)
    finally:
        taken.close()
    for name in bare:
        assert torch.equal(bare[name], watched[name]), name
    assert diagnostics.prometheus_url is None
    assert [r.getMessage() for r in caplog.records if "without /metrics" in r.getMessage()] == [
        f"gradwatch: prometheus_port {port} on prometheus_addr '127.0.0.1' cannot be served: "
        "[Errno 98] Address already in use; training goes on without /metrics"]
    assert len(read_scalars(str(tmp_path / "tb"))["gradwatch/loss"]) == 10  # other exports work


@pytest.fixture
def full_disk(tmp_path):
    """A 32 KiB tmpfs: TensorBoard fills it within a few steps."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def thread_errors():
    """The exceptions that end background threads during the test, captured (instead of
    pytest's warning with a full traceback) for the test to judge."""
    caught: list[threading.ExceptHookArgs] = []
    before, threading.excepthook = threading.excepthook, caught.append
    yield caught
    threading.excepthook = before


@pytest.mark.training
def test_a_full_disk_does_not_hurt_training(tmp_path, full_disk, caplog, thread_errors):
    bare, _ = train([], tmp_path / "bare", steps=60, pace=0, zero_init=False)
    diagnostics = TrainingDiagnostics(every_n_steps=1, tensorboard_dir=str(full_disk / "tb"))
    with caplog.at_level(logging.WARNING, logger="gradwatch"):
        watched, _ = train([diagnostics], tmp_path / "watched", steps=60, pace=0,
                           zero_init=False)
    for name in bare:
        assert torch.equal(bare[name], watched[name]), name
    assert shutil.disk_usage(full_disk).free == 0  # the disk really filled up
    messages = [r.getMessage() for r in caplog.records if r.name == "gradwatch"]
    assert len([m for m in messages if "No space left" in m]) == 1, messages
    # TensorBoard's own writer thread dies of the full disk too; nothing else may fail
    assert all(isinstance(e.exc_value, OSError) and e.exc_value.errno == errno.ENOSPC
               for e in thread_errors), [repr(e.exc_value) for e in thread_errors]
