"""Recordings reach their Calls exactly once, whole, however often the worker is killed.

WAV files are written slowly by a thread, frame by frame as MixMonitor
writes them (the header patched as the data grows), while ``crmroute outbox
flush`` runs as a real process against the Zoho simulator and is killed with
SIGKILL again and again: before an upload, during it (each upload takes a
while at the simulator), between Zoho's answer and the outbox's commit. At
the end each Call holds its recording once, byte for byte the finished file.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import threading
import time
import wave
from pathlib import Path

from conftest import zoho_toml
from dialplan.outbox import Outbox
from dialplan.outcome import outcome_from_channel
from test_outbox_crash import flush_command, flush_env, flush_killed

KNOWN = "+34928000000"
CALLS = 6
KILLS = 15
FRAME = 320  # 20 ms of 8 kHz 16-bit mono, as MixMonitor writes it


def write_config(path: Path, sim, outbox_path: Path, folder: Path) -> None:
    path.write_text(zoho_toml(sim, zoho="""
user_extension_field = "Extension"
# An upload whose sender was killed may still reach Zoho (the simulator keeps serving it): it is
# looked for only once it would show, well after the 0.4 s each upload takes here.
search_lag_s = 2
breaker_open_s = 1
""", rest=f"""
[outbox]
path = "{outbox_path}"
backoff_initial_s = 0.01
backoff_max_s = 0.05
lease_s = 600
[outcomes]
answered_by_other_task = false
[recordings]
directory = "{folder}"
settle_s = 2
"""))


def mixmonitor(path: Path, frames: int, pause_s: float, started: threading.Event) -> None:
    """Write a WAV file the way MixMonitor does: a header, then frames as the call goes."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        started.set()
        for n in range(frames):
            handle.writeframes(bytes((n + i) % 251 for i in range(FRAME)))
            time.sleep(pause_s)


def recording_writes(outbox_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(outbox_path)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM writes WHERE step = 'recording' GROUP BY state").fetchall())
    finally:
        conn.close()


def test_recordings_written_slowly_reach_their_calls_once_across_sigkills(tmp_path):
    from zoho_simulator import ZohoSimulator

    rng = random.Random(20261202)
    with ZohoSimulator(latency_s=0.015, max_tokens_per_window=1000) as sim:
        ana = sim.add_user("Ana García", "ana@example.com", Extension="101")
        lead = sim.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone=KNOWN, Lead_Status="Contacted")
        # Each upload takes a while: kills land in the middle of it.
        sim.latency_for(r"/Attachments$", 0.4, method="POST")
        folder = tmp_path / "monitor"
        folder.mkdir()
        outbox_path = tmp_path / "outbox.sqlite"
        config_path = tmp_path / "crmroute.toml"
        write_config(config_path, sim, outbox_path, folder)

        now = time.time()
        routed = {"route_status": "OWNER", "owner_id": ana["id"], "module": "Leads", "record_id": lead["id"], "route_extension": "101"}
        names = [f"{int(now)}.{i}.wav" for i in range(CALLS)]
        writers = []
        for i, name in enumerate(names):
            started = threading.Event()
            # 150 to 300 frames 10 ms apart: each file grows for 1.5 to 3 s, far under settle_s between frames.
            writer = threading.Thread(target=mixmonitor, args=(folder / name, 150 + 30 * i, 0.01, started), daemon=True)
            writer.start()
            started.wait(10)
            writers.append(writer)
        box = Outbox.open(outbox_path)
        box.record_many([
            (outcome_from_channel(
                call_id=f"{int(now)}.{i}", caller=KNOWN, region="ES", ended_at=now, recordings_dir=str(folder),
                readings={**routed, "dial_status": "ANSWER", "peer_number": "101", "answered_s": "30", "recording": name},
            ), now)
            for i, name in enumerate(names)
        ])
        box.close()

        command = flush_command(config_path)
        env = flush_env()
        killed_mid_write = flush_killed(command, env, outbox_path, KILLS, lambda: rng.uniform(0.5, 2.0))
        for writer in writers:
            writer.join(30)
        finishing = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
            finishing.append(finished.stdout + finished.stderr)
            box = Outbox.open(outbox_path)
            counts = box.counts()
            box.close()
            if counts["done"] == CALLS or counts["dead"]:
                break
        assert counts["done"] == CALLS, "\n".join(finishing[-3:])

        calls = sim.records("Calls")
        assert len(calls) == CALLS, "every Call exactly once"
        files = {name: (folder / name).read_bytes() for name in names}
        for call in calls:
            attachments = sim.attachments("Calls", call["id"])
            assert len(attachments) == 1, f"{call['Subject']}: {len(attachments)} attachments"
            [attachment] = attachments
            assert attachment["content"] == files[attachment["File_Name"]], "the finished file, never part of it"
        assert {a["File_Name"] for c in calls for a in sim.attachments("Calls", c["id"])} == set(names)
        for content in files.values():
            with wave.open(__import__("io").BytesIO(content)) as handle:
                assert handle.getnframes() * 2 == len(content) - 44, "a whole WAV file, its header patched at the end"
        posts = [r for r in sim.api_requests() if r.method == "POST" and r.path.endswith("/Attachments")]
        looks = [r for r in sim.api_requests() if r.method == "GET" and r.path.endswith("/Attachments")]
        print(f"kills: {KILLS}, left a write uncertain: {killed_mid_write}, uploads sent: {len(posts)}, looked for: {len(looks)}")
        assert recording_writes(outbox_path) == {"done": CALLS}
        assert killed_mid_write >= 1, "the kills landed in the middle of the work"
