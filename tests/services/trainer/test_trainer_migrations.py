"""The job store's schema comes from its Alembic migrations, which must match the SQLAlchemy model."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from services.trainer.store import MIGRATIONS, VERSION_TABLE, Base, JobStore, alembic_config


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_db")


def test_the_migrations_build_exactly_the_model_and_stamp_the_head(url):
    JobStore(url).close()
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        head = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
        assert context.get_current_revision() == head
        # a model change without its migration shows up here (compare_type: column types too)
        opts = {"compare_type": True, "version_table": VERSION_TABLE}
        assert compare_metadata(MigrationContext.configure(connection, opts=opts),
                                Base.metadata) == []
    assert {"specserve_trainer_jobs", VERSION_TABLE} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_stores_opened_at_once_migrate_one_at_a_time(url):
    errors, barrier = [], threading.Barrier(4)

    def open_store():
        barrier.wait()
        try:
            JobStore(url).close()
        except Exception as exc:  # noqa: BLE001 (the assertion below reports it)
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_every_migration_has_a_downgrade_back_to_an_empty_database(url):
    from alembic import command

    JobStore(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert "specserve_trainer_jobs" not in inspect(engine).get_table_names()
    engine.dispose()
    assert (MIGRATIONS / "versions").is_dir()
