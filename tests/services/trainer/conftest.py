"""Fixtures of the trainer tests: a real Redis server and a throwaway PostgreSQL cluster, each started for the
session from the Debian packages (`redis-server`, `postgresql`; .ci/run installs them), and a tiny training run.
A missing package skips the tests that need it, naming it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from trainer_testkit import free_port, postgres_cluster, wait_for


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (Debian package redis-server; .ci/run installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(up, 20, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def postgres_url():
    """The session's cluster (or SPECSERVE_TEST_POSTGRES_URL, an empty database you provide)."""
    if os.environ.get("SPECSERVE_TEST_POSTGRES_URL"):
        yield os.environ["SPECSERVE_TEST_POSTGRES_URL"]
        return
    with postgres_cluster() as (url, _):
        yield url


@pytest.fixture
def job_config(tiny_target_dir, train_file):
    """make(steps, every) -> the config of a tiny DSpark run (2-layer draft, γ 3), as a client submits it."""
    from transformers import AutoTokenizer

    mask_id = AutoTokenizer.from_pretrained(tiny_target_dir).convert_tokens_to_ids("<|mask|>")

    def make(steps: int = 4, every: int = 2) -> dict:
        return {
            "model": {"algorithm": "dspark", "target": str(tiny_target_dir), "num_layers": 2, "block_size": 3,
                      "num_anchors": 4, "mask_token_id": mask_id, "markov_rank": 8},
            "data": {"train_file": str(train_file), "split": "all", "max_length": 64},
            "optim": {"lr": 3e-3},
            "train": {"global_batch_size": 4, "local_batch_size": 2, "max_steps": steps, "seed": 3},
            "checkpoint": {"every_steps": every, "export_dtype": "float32"},
            "logging": {"every_steps": 1, "tensorboard": False},
        }

    return make


@pytest.fixture
def postgres_db(postgres_url):
    """The session's PostgreSQL database with no trainer tables: every test starts from an empty store."""
    from sqlalchemy import create_engine, text

    from services.trainer.store import VERSION_TABLE, Base

    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    engine.dispose()
    return postgres_url
