"""Call recordings: the ``[recordings]`` settings and how a file being written is told complete."""

from __future__ import annotations


from pathlib import Path

import pytest

from dialplan.recordings import FileSettling, FileState, RecordingSettings, look
from fastagi_server.config import ConfigError, config_from_dict


def test_the_defaults_work_and_name_asterisks_monitor_folder():
    settings = config_from_dict({}).recordings
    assert settings.directory == "/var/spool/asterisk/monitor"
    assert settings.mode == "attach" and not settings.delete_after_upload
    assert settings.max_attachment_bytes == 20 * 1024 * 1024
    assert settings.link("a.wav") == ""


def test_a_link_is_the_template_with_the_files_name_quoted():
    settings = RecordingSettings(url_template="https://pbx.example.com/rec/{file}")
    assert settings.link("2026/12/1700000000.7.wav") == "https://pbx.example.com/rec/2026/12/1700000000.7.wav"
    assert settings.link("a+b@c.wav") == "https://pbx.example.com/rec/a%2Bb%40c.wav"


@pytest.mark.parametrize(
    "section, key",
    [
        ({"directory": "monitor"}, "directory"),
        ({"mode": "email"}, "mode"),
        ({"mode": "link"}, "url_template"),
        ({"url_template": "https://pbx.example.com/rec/"}, "url_template"),
        ({"url_template": "ftp://pbx/{file}"}, "url_template"),
        ({"url_template": "https://pbx/{file}/{other}"}, "url_template"),
        ({"max_attachment_mb": 0}, "max_attachment_mb"),
        ({"settle_s": 0}, "settle_s"),
        ({"wait_max_s": -1}, "wait_max_s"),
        ({"delete_after_upload": "yes"}, "delete_after_upload"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(section, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"recordings": section})
    assert key in str(error.value) and "recordings" in str(error.value)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_file_is_complete_once_it_stood_still_for_the_settle_time():
    clock = Clock(1000.0)
    settling = FileSettling(2.0, clock)
    assert not settling.complete("k", FileState(True, 100, int(999.9e9)))  # written a moment ago
    clock.now += 1.0
    grown = FileState(True, 200, int(1000.9e9))
    assert not settling.complete("k", grown)
    assert 0.05 <= settling.wait_for("k") <= 2.0
    clock.now += 2.5
    assert settling.complete("k", grown)
    assert settling.complete("old", FileState(True, 100, int(900e9))), "a file untouched for long is complete at the first look"
    assert not settling.complete("gone", FileState(False))


def test_a_file_seen_to_change_is_not_complete_whatever_its_time_of_change():
    clock = Clock(1000.0)
    settling = FileSettling(2.0, clock)
    assert settling.complete("k", FileState(True, 100, int(900e9)))
    # A copy that keeps the old time of change, grown since the last look.
    assert not settling.complete("k", FileState(True, 300, int(900e9)))
    assert settling.complete("k", FileState(True, 300, int(900e9)))


def test_a_file_changed_in_the_future_is_not_complete():
    clock = Clock(1000.0)
    settling = FileSettling(2.0, clock)
    assert not settling.complete("k", FileState(True, 100, int(1003e9)))


def test_a_symlink_or_a_folder_counts_as_missing(tmp_path):
    target = tmp_path / "secret.wav"
    target.write_bytes(b"RIFF")
    (tmp_path / "link.wav").symlink_to(target)
    (tmp_path / "dir.wav").mkdir()
    assert look(target).exists and look(target).size == 4
    assert not look(tmp_path / "link.wav").exists
    assert not look(tmp_path / "dir.wav").exists
    assert not look(tmp_path / "none.wav").exists


def test_check_config_warns_when_recordings_cannot_be_read(tmp_path):
    from fastagi_server.config_check import recordings_warnings

    if not Path("/var/spool/asterisk/monitor").is_dir():
        assert recordings_warnings(config_from_dict({})) == [], "nothing set up, no Asterisk on this host: no noise"
    missing = config_from_dict({"recordings": {"directory": str(tmp_path / "none")}})
    assert recordings_warnings(missing) == [f"recordings.directory: {tmp_path / 'none'} is not a directory here; recordings named by CRM_RECORDING cannot be read"]
    assert recordings_warnings(config_from_dict({"recordings": {"directory": str(tmp_path)}})) == []
