"""`python -m services.verifier`: settings from the environment, SPS profiled at start-up, SIGTERM drains."""

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.clients import RemoteDrafter, RemoteVerifier
from services.drafter.server import DrafterServer, build_drafter
from services.drafter.settings import DrafterSettings
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine

ROOT = Path(__file__).resolve().parents[2]


def launch(module: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def wait_for_port(proc: subprocess.Popen, timeout: float = 40.0) -> int:
    """Read the server's log until it says where it serves."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.5):
            line = proc.stderr.readline()
            seen.append(line)
            if m := re.search(r"serving on [\w.]+:(\d+)", line):
                return int(m.group(1))
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(seen) + (proc.stderr.read() or ""))


def test_verifier_runs_from_environment_settings_and_drains_on_sigterm(tiny_target_dir, start):
    verifier = launch("services.verifier", {
        "SPECSERVE_VERIFIER_HOST": "127.0.0.1", "SPECSERVE_VERIFIER_PORT": "0", "SPECSERVE_VERIFIER_GRACE_S": "2",
        "SPECSERVE_VERIFIER_SHUTDOWN_DELAY_S": "0", "SPECSERVE_VERIFIER_MODEL": str(tiny_target_dir),
        "SPECSERVE_VERIFIER_SPS_SIZES": "[1, 4]", "SPECSERVE_VERIFIER_SPS_CONTEXT": "8",
        "SPECSERVE_VERIFIER_SPS_REPEATS": "1"})
    try:
        port = wait_for_port(verifier)
        remote_verifier = RemoteVerifier(f"127.0.0.1:{port}", timeout_s=10)
        assert set(remote_verifier.load().sps) == {1, 4}, "SPS(B) was profiled at start-up"
        assert set(remote_verifier.load().plain_sps) == {1, 2, 4}, "and that of plain rounds, up to as many sessions"
        assert remote_verifier.load().padding_cost == 0.5, "the replica's padding cost, fetched with the SPS table"
        drafter = DrafterServer(DrafterSettings(host="127.0.0.1", port=0, shutdown_delay_s=0))
        engine = SpecEngine(remote_verifier, RemoteDrafter(start(drafter), timeout_s=10))
        [request] = engine.generate([[5, 6, 7, 5, 6, 7, 5]], SamplingParams(max_tokens=8, ignore_eos=True))
        assert request.finish_reason == "length" and len(request.output_ids) == 8
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        verifier.send_signal(signal.SIGTERM)
    assert verifier.wait(20) == 0
    assert "stopped" in verifier.stderr.read()


def test_drafter_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPECSERVE_DRAFTER_DRAFTER", "ngram:3")
    monkeypatch.setenv("SPECSERVE_DRAFTER_LEASE_TTL_S", "5")
    settings = DrafterSettings()
    assert (settings.drafter, settings.lease_ttl_s, settings.port) == ("ngram:3", 5.0, 50052)
    drafter = build_drafter(settings)
    assert isinstance(drafter, NgramDrafter) and drafter.max_block == 3


def test_drafter_service_fills_a_headless_draft_from_the_target_files():
    """The demo DSpark draft is saved without embed_tokens/lm_head: the drafter service reads only those two
    tensors of `target` (tied here: the LM head is the embedding) and builds the same model a full target gives."""
    import torch

    from specserve.drafters.factory import load_tap_drafter
    from specserve.errors import ModelLoadError
    from specserve.target.model import CausalLM

    draft, target = str(ROOT / "models/demo/dspark"), str(ROOT / "models/demo/target")
    served = build_drafter(DrafterSettings(drafter=f"dspark:{draft}", target=target))
    reference = load_tap_drafter(draft, CausalLM.from_pretrained(target, load_tokenizer=False), kind="dspark")
    got, want = served.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    try:
        build_drafter(DrafterSettings(drafter=f"dspark:{draft}"))
    except ModelLoadError as exc:
        assert "embed_tokens.weight" in str(exc) and "SPECSERVE_DRAFTER_TARGET" in str(exc)
    else:
        raise AssertionError("a headless draft without a target must be refused")
