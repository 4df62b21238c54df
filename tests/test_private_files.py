"""Files holding callers' numbers, names and call history are private to the
service's user: created 0600, a folder made for them 0700, whatever the umask."""

from __future__ import annotations

import os
import stat
import time

import pytest

from conftest import run
from crmlookup.files import create_private_file, ensure_private_directory
from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel


@pytest.fixture(autouse=True)
def permissive_umask():
    """The usual umask, which leaves new files readable by all."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outbox_file_its_journal_and_its_folder_are_private(tmp_path):
    path = tmp_path / "state" / "crmroute" / "outbox.sqlite"
    box = Outbox.open(path)
    outcome = outcome_from_channel(call_id="1700000000.1", caller="+34928000000", readings={"dial_status": "NOANSWER"}, ended_at=time.time(), region="ES")
    try:
        assert run(box.record(outcome, time.time()))
        assert mode(path) == 0o600
        assert mode(f"{path}-wal") == 0o600 and mode(f"{path}-shm") == 0o600
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        box.close()


def test_an_existing_folder_keeps_its_mode(tmp_path):
    (tmp_path / "shared").mkdir(mode=0o755)
    Outbox.open(tmp_path / "shared" / "outbox.sqlite").close()
    assert mode(tmp_path / "shared") == 0o755
    assert mode(tmp_path / "shared" / "outbox.sqlite") == 0o600


def test_directory_import_creates_a_private_file(tmp_path):
    from click.testing import CliRunner

    from fastagi_server.cli import cli

    records = tmp_path / "records.csv"
    records.write_text("module,id,name,phones,owner_id,owner_name,owner_email,owner_extensions,status\nLeads,L-1,Marta,+34928000000,u1,Ana,ana@example.com,101,open\n")
    target = tmp_path / "data" / "directory.sqlite"
    done = CliRunner().invoke(cli, ["directory", "import", str(records), "--path", str(target)])
    assert done.exit_code == 0, done.output
    assert mode(target) == 0o600 and mode(target.parent) == 0o700


def test_token_cache_file_is_private(tmp_path):
    from crmlookup.zoho.token_file import TokenFile

    token = TokenFile(tmp_path / "token.json")
    token.save("1000.secret", "https://www.zohoapis.eu", 3600)
    assert mode(tmp_path / "token.json") == 0o600


def test_the_helpers_leave_an_existing_file_alone(tmp_path):
    existing = tmp_path / "kept"
    existing.write_text("data")
    os.chmod(existing, 0o640)
    assert create_private_file(existing) is False
    assert existing.read_text() == "data" and mode(existing) == 0o640
    assert create_private_file(tmp_path / "a" / "b" / "new") is True
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b" / "new") == 0o600
    ensure_private_directory(tmp_path / "a")  # exists: nothing happens
    with pytest.raises(OSError):
        ensure_private_directory(existing / "below-a-file")
