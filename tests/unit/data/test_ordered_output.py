"""The resumable in-order JSONL writer: partial lines dropped, mismatched resumes and strangers refused."""

import json

import pytest

from specserve.data.errors import ResumeMismatchError
from specserve.data.ordered_output import OrderedJsonlWriter, progress_path

IDENTITY = {"input_sha256": "abc", "temperature": 0.7}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_drops_unsynced_rows_and_partial_line(tmp_path):
    out = tmp_path / "out.jsonl"
    writer = OrderedJsonlWriter(out, IDENTITY, sync_every=2)
    for i in range(3):  # rows 0-1 synced, row 2 only written
        writer.write({"i": i})
    writer._file.flush()
    writer._file.write(b'{"i": 3, "trunc')  # a crash in the middle of a line
    writer._file.close()  # the process dies here: no sync, no progress update
    resumed = OrderedJsonlWriter(out, IDENTITY, sync_every=2)
    assert resumed.rows_done == 2
    assert lines(out) == [{"i": 0}, {"i": 1}]
    resumed.write({"i": 2})
    resumed.finish()
    assert lines(out) == [{"i": 0}, {"i": 1}, {"i": 2}]
    again = OrderedJsonlWriter(out, IDENTITY)
    assert again.complete and again.rows_done == 3
    again.close()


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    OrderedJsonlWriter(out, IDENTITY).close()
    with pytest.raises(ResumeMismatchError, match="temperature: was 0.7, now 1.0"):
        OrderedJsonlWriter(out, {**IDENTITY, "temperature": 1.0})
    OrderedJsonlWriter(out, {**IDENTITY, "temperature": 1.0}, overwrite=True).close()


def test_foreign_output_is_not_clobbered(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"mine": true}\n')
    with pytest.raises(ResumeMismatchError, match="no progress file"):
        OrderedJsonlWriter(out, IDENTITY)
    assert out.read_text() == '{"mine": true}\n'


def test_shortened_output_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    with OrderedJsonlWriter(out, IDENTITY, sync_every=1) as writer:
        writer.write({"i": 0})
    out.write_text("")
    with pytest.raises(ResumeMismatchError, match="modified"):
        OrderedJsonlWriter(out, IDENTITY)
    assert json.loads(progress_path(out).read_text())["rows_done"] == 1
