"""Call recordings into the CRM: Zoho attachments and links over real HTTP, the local directory's call row.

The worker runs in this process with a clock the test moves, so "the file
stood still long enough" is decided by the test, not by sleeping; the files
are real files, their times of change set as a writer's would be.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import make_config
from dialplan.outbox import DeliveryWorker
from dialplan.outbox.interface import open_store
from dialplan.outcome import outcome_from_channel
from fastagi_server.app import App
from fastagi_server.cli import cli

KNOWN = "+34928000000"
URL = "https://pbx.example.com/rec/{file}"


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A real WAV file: 16-bit mono PCM, as MixMonitor writes for a .wav name."""
    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(bytes((i * 7) % 256 for i in range(int(seconds * rate) * 2)))
    return out.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def org(zoho):
    ana = zoho.add_user("Ana García", "ana@example.com", Extension="101")
    lead = zoho.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
    return {"sim": zoho, "ana": ana, "lead": lead}


def settings(zoho, tmp_path, *, recordings: dict[str, Any] | None = None, zoho_extra: dict[str, Any] | None = None, backend: str = "zoho", store_url: str = ""):
    folder = tmp_path / "monitor"
    folder.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "crm": {"backend": backend},
        "routing": {"default_region": "ES"},
        "outbox": {"path": str(tmp_path / "outbox.sqlite"), "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        "outcomes": {"timezone": "Europe/Madrid", "answered_by_other_task": False},
        "recordings": {"directory": str(folder), "settle_s": 2, "wait_max_s": 600, **(recordings or {})},
    }
    if store_url:
        data["store"] = {"url": store_url}
    if backend == "zoho":
        data["zoho"] = zoho.zoho_config(user_extension_field="Extension", search_lag_s=0, breaker_open_s=1, **(zoho_extra or {}))
    return make_config(data), folder


def record(cfg, org, clock: Clock, call_id: str = "1700000000.7", name: str = "1700000000.7.wav", answered: bool = True, **extra: str) -> None:
    readings = {"dial_status": "ANSWER" if answered else "NOANSWER", "peer_number": "101", "answered_s": "42", "recording": name, **extra}
    if org is not None:
        readings.update(route_status="OWNER", owner_id=org["ana"]["id"], module="Leads", record_id=org["lead"]["id"], route_extension="101")
    outcome = outcome_from_channel(
        call_id=call_id, caller=KNOWN, readings=readings, ended_at=clock.now - 5, region="ES", recordings_dir=cfg.recordings.directory
    )
    box = open_store(cfg.outbox.resolved_path, cfg.store)
    box.record_many([(outcome, clock.now)])
    box.close()


def written(path: Path, content: bytes, when: float) -> None:
    """``content`` in ``path``, last changed at ``when`` (as a writer that stopped then leaves it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (when, when))


def rounds(cfg, clock: Clock, steps: list[float], before: dict[int, Any] | None = None) -> list[Any]:
    """One round per step, the clock moved by the step's seconds after it; what each round did.
    ``before[i]`` runs before round ``i`` (one worker for them all, so it remembers its looks)."""

    async def scenario() -> list[Any]:
        app = App.from_config(cfg)
        try:
            worker = DeliveryWorker(
                app.outbox, app.writer, app.backend, settings=cfg.outbox, outcomes=cfg.outcomes, routing=cfg.routing,
                clock=clock, recordings=cfg.recordings,
            )
            done = []
            for index, step in enumerate(steps):
                if before and index in before:
                    before[index]()
                done.append(await worker.round())
                clock.now += step
            return done
        finally:
            await app.aclose()

    return asyncio.run(scenario())


def listing(cfg_path: Path) -> str:
    result = CliRunner().invoke(cli, ["outbox", "list", "--config", str(cfg_path)], catch_exceptions=False)
    return result.output


def toml_of(cfg, tmp_path: Path, zoho) -> Path:
    path = tmp_path / "crmroute.toml"
    path.write_text(f'[routing]\ndefault_region = "ES"\n[outbox]\npath = "{cfg.outbox.resolved_path}"\n')
    return path


def states(cfg) -> dict[str, int]:
    box = open_store(cfg.outbox.resolved_path, cfg.store, create=False)
    try:
        return {state: count for state, count in box.counts().items() if count}
    finally:
        box.close()


def attachment_posts(sim) -> list[Any]:
    return [r for r in sim.api_requests() if r.method == "POST" and r.path.endswith("/Attachments")]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """The outbox in SQLite (""), or in a fresh PostgreSQL database when one is at hand."""
    if request.param == "sqlite":
        yield ""
        return
    from postgres_server import fresh_database

    with fresh_database() as url:
        yield url


def test_a_complete_recording_reaches_the_call_as_an_attachment_once(org, tmp_path, store_url):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, store_url=store_url)
    content = wav_bytes()
    written(folder / "1700000000.7.wav", content, clock.now - 30)
    record(cfg, org, clock)
    first, second = rounds(cfg, clock, [3, 1])
    [call] = sim.records("Calls")
    assert first.delivered == 1
    [attachment] = sim.attachments("Calls", call["id"])
    assert attachment["File_Name"] == "1700000000.7.wav" and attachment["content"] == content
    assert content.startswith(b"RIFF") and content[8:12] == b"WAVE"
    assert second.claimed == 0 and len(attachment_posts(sim)) == 1
    assert states(cfg) == {"done": 1}
    if not store_url:
        out = listing(toml_of(cfg, tmp_path, sim))
        assert "[recording uploaded (16044 bytes)]" in out, out


def test_the_call_is_in_the_crm_while_the_recording_is_still_written(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path)
    record(cfg, org, clock)
    path = folder / "1700000000.7.wav"
    results = rounds(cfg, clock, [3])
    assert results[0].deferred == 1 and len(sim.records("Calls")) == 1, "never blocking the Call"
    out = listing(toml_of(cfg, tmp_path, sim))
    assert f"waiting for the recording {path}: not there" in out, out
    content = wav_bytes(2.0)
    half = len(content) // 2
    results = rounds(cfg, clock, [3, 0.5, 3, 1, 1], before={
        0: lambda: written(path, content[:half], clock.now),  # MixMonitor is still writing
        1: lambda: written(path, content, clock.now - 10),  # it wrote more since the last look (a copy keeping an old time)
        2: lambda: written(path, content, clock.now),  # and touched it again just now
    })
    assert [r.delivered for r in results] == [0, 0, 0, 1, 0], "too recent, changed since the last look, too recent, then complete"
    assert all(r.deferred == 1 for r in results[:3])
    [attachment] = sim.attachments("Calls", sim.records("Calls")[0]["id"])
    assert attachment["content"] == content, "read once complete, never half"


def test_a_recording_missing_past_the_wait_is_dead_with_the_reason(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"wait_max_s": 60})
    record(cfg, org, clock)
    results = rounds(cfg, clock, [61, 1])
    assert results[0].deferred == 1 and results[1].dead == 1
    assert len(sim.records("Calls")) == 1 and not attachment_posts(sim)
    assert states(cfg) == {"dead": 1}
    out = listing(toml_of(cfg, tmp_path, sim))
    assert f"recording {folder / '1700000000.7.wav'} is not there" in out and "after the call ended (recordings.wait_max_s = 60)" in out, out


def test_a_file_over_the_limit_is_linked_in_the_description(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"max_attachment_mb": 1, "url_template": URL})
    written(folder / "1700000000.7.wav", b"RIFF" + b"\0" * (1024 * 1024 + 10), clock.now - 30)
    record(cfg, org, clock)
    rounds(cfg, clock, [3, 1])
    [call] = sim.records("Calls")
    assert call["Description"].endswith("\nRecording: https://pbx.example.com/rec/1700000000.7.wav")
    assert call["Description"].startswith("Caller: +34928000000")
    assert not attachment_posts(sim) and states(cfg) == {"done": 1}
    out = listing(toml_of(cfg, tmp_path, sim))
    assert "over the 1 MB attachment limit): https://pbx.example.com/rec/1700000000.7.wav]" in out, out


def test_a_file_zoho_refuses_as_too_large_is_linked_in_the_recording_field(org, tmp_path):
    sim = org["sim"]
    sim.attachment_limit_bytes = 10_000
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"url_template": URL}, zoho_extra={"recording_field": "Voice_Recording__s"})
    written(folder / "1700000000.7.wav", wav_bytes(), clock.now - 30)
    record(cfg, org, clock)
    rounds(cfg, clock, [3, 1])
    [call] = sim.records("Calls")
    assert call["Voice_Recording__s"] == "https://pbx.example.com/rec/1700000000.7.wav"
    assert [r.status for r in attachment_posts(sim)] == [413]
    assert sim.attachments("Calls", call["id"]) == [] and states(cfg) == {"done": 1}


def test_link_mode_links_every_recording_and_never_uploads(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"mode": "link", "url_template": URL, "delete_after_upload": True})
    path = folder / "2026" / "1700000000.7.wav"
    written(path, wav_bytes(), clock.now - 30)
    record(cfg, org, clock, name="2026/1700000000.7.wav")
    rounds(cfg, clock, [3, 1])
    assert sim.records("Calls")[0]["Description"].endswith("Recording: https://pbx.example.com/rec/2026/1700000000.7.wav")
    assert not attachment_posts(sim)
    assert path.exists(), "a linked recording is never deleted: the link points at it"


def test_over_the_limit_without_a_url_template_is_dead_with_the_reason(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"max_attachment_mb": 1})
    written(folder / "1700000000.7.wav", b"\0" * (1024 * 1024 + 1), clock.now - 30)
    record(cfg, org, clock)
    rounds(cfg, clock, [3, 1])
    assert states(cfg) == {"dead": 1} and len(sim.records("Calls")) == 1
    assert "recordings.url_template is not set" in listing(toml_of(cfg, tmp_path, sim))


def test_delete_after_upload_deletes_only_a_confirmed_upload(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"delete_after_upload": True})
    path = folder / "1700000000.7.wav"
    written(path, wav_bytes(), clock.now - 30)
    record(cfg, org, clock)
    sim.add_fault(r"/Attachments$", status=500, method="POST", times=1)
    [failing] = rounds(cfg, clock, [3])
    assert failing.failed == 1 and path.exists(), "the upload failed: the file stays"
    rounds(cfg, clock, [3, 1])
    assert states(cfg) == {"done": 1}
    assert len(sim.attachments("Calls", sim.records("Calls")[0]["id"])) == 1
    assert not path.exists(), "deleted once Zoho confirmed it"


def test_an_upload_whose_answer_was_lost_is_found_not_sent_again(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path)
    written(folder / "1700000000.7.wav", wav_bytes(), clock.now - 30)
    record(cfg, org, clock)
    sim.add_fault(r"/Attachments$", method="POST", close=True, after=True, times=1)
    rounds(cfg, clock, [3, 1, 3, 3, 1])
    assert states(cfg) == {"done": 1}
    assert len(sim.attachments("Calls", sim.records("Calls")[0]["id"])) == 1
    assert len(attachment_posts(sim)) == 1
    assert [r for r in sim.api_requests() if r.method == "GET" and r.path.endswith("/Attachments")]


def test_a_hostile_recording_name_is_refused_and_never_read(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path)
    secret = tmp_path / "secret.wav"
    written(secret, b"not for the CRM", clock.now - 30)
    record(cfg, org, clock, name="../secret.wav")
    [result] = rounds(cfg, clock, [1])
    assert result.dead == 1 and len(sim.records("Calls")) == 1 and not attachment_posts(sim)
    assert "CRM_RECORDING refused" in listing(toml_of(cfg, tmp_path, sim))


def test_a_recording_behind_a_symlinked_folder_is_not_read(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path)
    outside = tmp_path / "elsewhere"
    written(outside / "1700000000.7.wav", b"RIFF elsewhere", clock.now - 30)
    (folder / "day").symlink_to(outside)
    record(cfg, org, clock, name="day/1700000000.7.wav")
    rounds(cfg, clock, [3, 1])
    assert states(cfg) == {"dead": 1} and not attachment_posts(sim)
    assert "leads outside recordings.directory" in listing(toml_of(cfg, tmp_path, sim))


def test_a_missed_call_has_no_recording_step(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, _folder = settings(sim, tmp_path)
    record(cfg, org, clock, answered=False)
    [result] = rounds(cfg, clock, [1])
    assert result.delivered == 1 and not attachment_posts(sim)


def test_the_local_directory_keeps_the_path_on_the_call_row(tmp_path):
    clock = Clock()
    cfg, folder = settings(None, tmp_path, backend="local")
    record(cfg, None, clock)
    [result] = rounds(cfg, clock, [1])
    assert result.delivered == 1

    async def calls() -> list[dict[str, object]]:
        app = App.from_config(cfg)
        try:
            writer = app.writer
            rows = await writer._directory.on_thread(lambda: writer._conn().execute("SELECT key, recording FROM calls").fetchall())  # type: ignore[attr-defined]
            return [dict(zip(("key", "recording"), row)) for row in rows]
        finally:
            await app.aclose()

    assert asyncio.run(calls()) == [{"key": "1700000000.7", "recording": str(folder / "1700000000.7.wav")}]


def test_a_lead_whose_outcome_died_for_its_recording_is_still_the_callers_one_lead(org, tmp_path, store_url):
    sim = org["sim"]
    clock = Clock()
    cfg, _folder = settings(sim, tmp_path, recordings={"wait_max_s": 60}, store_url=store_url)
    unknown = "+34928777001"

    def call(call_id: str) -> None:
        readings = {"dial_status": "ANSWER", "peer_number": "101", "answered_s": "20", "route_status": "NOMATCH", "recording": f"{call_id}.wav"}
        outcome = outcome_from_channel(call_id=call_id, caller=unknown, readings=readings, ended_at=clock.now - 5, region="ES", recordings_dir=cfg.recordings.directory)
        box = open_store(cfg.outbox.resolved_path, cfg.store)
        box.record_many([(outcome, clock.now)])
        box.close()

    call("1700000000.1")
    results = rounds(cfg, clock, [61, 1, 1, 1], before={2: lambda: call("1700000000.2")})
    assert results[1].dead == 1, "its recording never came"
    leads = [r for r in sim.records("Leads") if r.get("Phone") == unknown]
    assert len(leads) == 1, "the second call is logged on the first call's lead"
    assert {c["What_Id"]["id"] for c in sim.records("Calls")} == {leads[0]["id"]}


class RealClock:
    """The time now; moving it is a no-op (the waits here are the simulator's)."""

    @property
    def now(self) -> float:
        return time.time()

    @now.setter
    def now(self, value: float) -> None:
        pass

    def __call__(self) -> float:
        return time.time()


def test_a_round_stops_starting_uploads_well_within_its_lease(org, tmp_path):
    sim = org["sim"]
    sim.latency_for(r"/Attachments$", 0.6, method="POST")  # each upload takes at least this long
    clock = RealClock()
    cfg, folder = settings(sim, tmp_path)
    cfg = make_config({**_toml(cfg, sim), "outbox": {"path": str(cfg.outbox.resolved_path), "lease_s": 1}})
    for i in range(3):
        written(folder / f"1700000000.{i}.wav", wav_bytes(0.1), time.time() - 30)
        record(cfg, org, clock, call_id=f"1700000000.{i}", name=f"1700000000.{i}.wav")
    [first] = rounds(cfg, clock, [0])
    assert first.delivered == 1 and first.deferred == 2, "past half the 1 s lease, no upload is started"
    assert len([r for r in sim.requests("/crm/v8/Calls", method="POST") if r.path == "/crm/v8/Calls"]) == 1, "the Calls all went at once"
    rounds(cfg, clock, [0, 0, 0])
    assert states(cfg) == {"done": 3}
    assert sum(len(sim.attachments("Calls", c["id"])) for c in sim.records("Calls")) == 3


def _toml(cfg, sim) -> dict[str, Any]:
    return {
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES"},
        "zoho": sim.zoho_config(user_extension_field="Extension", search_lag_s=0, breaker_open_s=1),
        "outcomes": {"timezone": "Europe/Madrid", "answered_by_other_task": False},
        "recordings": {"directory": cfg.recordings.directory, "settle_s": 2},
    }


def test_calls_that_take_no_attachments_end_dead_with_zohos_words(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path)
    written(folder / "1700000000.7.wav", wav_bytes(0.1), clock.now - 30)
    record(cfg, org, clock)
    refusal = {"code": "INVALID_MODULE", "details": {"resource_path_index": 0}, "message": "the module name given seems to be invalid", "status": "error"}
    sim.add_fault(r"/Attachments$", status=400, body=refusal, method="POST")
    results = rounds(cfg, clock, [1] * 6)
    assert [r.failed for r in results[:4]] == [1, 1, 1, 1] and results[4].dead == 1
    assert states(cfg) == {"dead": 1} and len(sim.records("Calls")) == 1
    assert "recording: POST /crm/v8/Calls/" in listing(toml_of(cfg, tmp_path, sim)) and "INVALID_MODULE" in listing(toml_of(cfg, tmp_path, sim))


def test_a_file_just_under_zohos_20_mb_is_attached_and_one_just_over_it_linked(org, tmp_path):
    sim = org["sim"]
    clock = Clock()
    cfg, folder = settings(sim, tmp_path, recordings={"url_template": URL})
    limit = 20 * 1024 * 1024
    under = wav_bytes(0.5) + os.urandom(limit - 16_044 - 1024)
    written(folder / "1700000000.1.wav", under, clock.now - 30)
    written(folder / "1700000000.2.wav", b"RIFF" + bytes(limit - 3), clock.now - 30)
    record(cfg, org, clock, call_id="1700000000.1", name="1700000000.1.wav")
    record(cfg, org, clock, call_id="1700000000.2", name="1700000000.2.wav")
    rounds(cfg, clock, [3, 1])
    assert states(cfg) == {"done": 2}
    by_key = {call["Subject"].rsplit("[", 1)[1].rstrip("]"): call for call in sim.records("Calls")}
    [attachment] = sim.attachments("Calls", by_key["1700000000.1"]["id"])
    assert attachment["content"] == under
    assert sim.attachments("Calls", by_key["1700000000.2"]["id"]) == []
    assert by_key["1700000000.2"]["Description"].endswith("Recording: https://pbx.example.com/rec/1700000000.2.wav")
    assert len(attachment_posts(sim)) == 1, "the file over the limit is never sent"


def test_from_the_hangup_handler_over_tcp_to_the_calls_attachment(org, tmp_path):
    from asterisk_peer import AsteriskPeer, asterisk_headers
    from conftest import agi_server

    sim = org["sim"]
    cfg, folder = settings(sim, tmp_path)
    content = wav_bytes()
    written(folder / "1700000000.9.wav", content, time.time() - 30)
    variables = {
        "DIALSTATUS": "ANSWER", "DIALEDPEERNUMBER": "101", "ANSWEREDTIME_MS": "42500", "CDR(start,u)": f"{time.time() - 90:.6f}",
        "CRM_ROUTE_STATUS": "OWNER", "CRM_OWNER_ID": org["ana"]["id"], "CRM_MODULE": "Leads", "CRM_RECORD_ID": org["lead"]["id"],
        "CRM_RECORDING": "1700000000.9.wav",
    }

    async def scenario() -> Any:
        async with agi_server(cfg) as server:
            headers = asterisk_headers(script="outcome", uniqueid="1700000000.9", caller=KNOWN, extension="s", arguments=("900",))
            await AsteriskPeer(channel_variables=variables).call(server.port, headers)
        app = App.from_config(cfg)
        try:
            return await app.delivery_worker.flush(max_seconds=30)
        finally:
            await app.aclose()

    summary = asyncio.run(scenario())
    assert summary.delivered == 1
    [call] = sim.records("Calls")
    [attachment] = sim.attachments("Calls", call["id"])
    assert (attachment["File_Name"], attachment["content"]) == ("1700000000.9.wav", content)
