"""The recording step: a call's recording onto its Call, once the Call exists.

Its own outbox step (``recording`` in ``writes``), after the Call's: the Call
is in the CRM whatever happens to the recording, and the recording is
retried, never written twice, like any other record:

* the file is read only once complete (:class:`~dialplan.recordings.FileSettling`):
  MixMonitor closes it after the hangup handler may have run. Meanwhile the
  outcome waits, uncounted, saying so in ``crmroute outbox list``;
* a file that is still missing (or still growing) ``recordings.wait_max_s``
  after the call ended makes the outcome dead, with the reason;
* ``sent`` is marked before the upload: after a crash the Call's attachments
  are looked through for the file before it is uploaded again (once the
  writer's ``search_lag_s`` has passed, as for any uncertain write: an upload
  whose sender died may still be on its way into the CRM);
* a file over the attachment limit (ours, or the one the CRM answers with) is
  linked instead, when ``recordings.url_template`` says where it is served;
* ``delete_after_upload`` deletes the file only once the CRM confirmed the
  upload and the outbox holds that confirmation; a linked file is kept (the
  link points at it).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from crmlookup.errors import CrmBadResponse
from crmlookup.writer import AttachmentTooLarge, CallEntry, CallRecording, RecordingWriter, RecordRef, WriteKind

from ..recordings import FileSettling, FileState, RecordingSettings, look
from .store import OutboxItem, WriteState

logger = logging.getLogger("crmroute.outbox")

RECORDING_STEP = "recording"
# Marks the step's write row: (state, CRM id, note or error).
Mark = Callable[[WriteState, str, str], Awaitable[None]]


@dataclass(frozen=True)
class StepResult:
    """What one try of the recording step came to."""

    done: bool = False
    # Not yet: try again at this time (the file is not complete); ``waiting`` says why.
    wait_until: float = 0.0
    waiting: str = ""
    # The CRM refused it (counted like a refused record, retried).
    rejected: str = ""
    # It can never be delivered as it is (missing file, refused name): the outcome is dead.
    fatal: str = ""


class RecordingStep:
    """Delivers recordings to a writer that takes them after the Call (:class:`RecordingWriter`)."""

    def __init__(self, settings: RecordingSettings, writer: RecordingWriter, clock: Callable[[], float], *, lag_s: float = 0.0):
        self._settings = settings
        self._writer = writer
        # How long an upload may take to show on the Call (the writer's search_lag_s).
        self._lag_s = lag_s
        self._clock = clock
        self._settling = FileSettling(settings.settle_s, clock)

    async def run(self, item: OutboxItem, call: CallEntry, call_id: str, mark: Mark) -> StepResult:
        """One try for ``item``, whose Call ``call`` is in the CRM as ``call_id``.

        An answer the CRM gives for this request alone (a 4xx: a module that
        takes no attachments, a field it does not know) is a refusal of this
        recording, counted like a refused record; the CRM down, slow or
        refusing our credentials raises, as for every write.
        """
        try:
            return await self._run(item, call, call_id, mark)
        except CrmBadResponse as exc:
            error = f"recording: {exc}"
            await mark(WriteState.REJECTED, "", error)
            return StepResult(rejected=error)

    async def _run(self, item: OutboxItem, call: CallEntry, call_id: str, mark: Mark) -> StepResult:
        outcome = item.outcome
        if outcome.recording_problem:
            await mark(WriteState.REJECTED, "", outcome.recording_problem)
            return StepResult(fatal=outcome.recording_problem)
        name = outcome.recording
        recording = CallRecording(
            call=RecordRef(WriteKind.CALL.value, call_id),
            key=outcome.call_id,
            file_name=posixpath.basename(name),
            link=self._settings.link(name),
            description=call.description,
        )
        path = self._settings.path_of(name)
        row = item.writes.get(RECORDING_STEP)
        if row is not None and row.state is WriteState.SENT:
            # An upload whose answer never came: it may be on the Call already, or still
            # on its way there (the CRM goes on with a request whose sender died).
            settled_at = row.updated_at + self._lag_s
            if self._clock() < settled_at:
                return StepResult(wait_until=settled_at, waiting="an upload whose answer never came: looked for on the Call once it would show")
            found = await self._writer.find_recording(recording)
            if found:
                await mark(WriteState.DONE, found, "uploaded (found on the Call after an answer that never came)")
                self._delete(path, outcome.call_id)
                return StepResult(done=True)
        escape = _escapes(path, self._settings.directory)
        if escape:
            await mark(WriteState.REJECTED, "", escape)
            return StepResult(fatal=escape)
        state = look(path)
        if not self._settling.complete(outcome.call_id, state):
            return await self._not_complete(outcome.call_id, outcome.ended_at, path, state, mark)
        if self._settings.mode == "link":
            return await self._link(recording, mark, "")
        if state.size > self._settings.max_attachment_bytes:
            return await self._link(recording, mark, f" (the file is {_mb(state.size)}, over the {self._settings.max_attachment_mb} MB attachment limit)")
        content = _read(path, state)
        if content is None:  # it changed after all: look again later
            self._settling.forget(outcome.call_id)
            return StepResult(wait_until=self._clock() + self._settings.settle_s, waiting=f"waiting for the recording {path}: still being written")
        await mark(WriteState.SENT, "", "")
        try:
            result = await self._writer.attach_recording(recording, content)
        except AttachmentTooLarge as exc:
            return await self._link(recording, mark, f" (the CRM refused the {_mb(state.size)} file as too large: {exc})")
        if not result.ok:
            error = f"recording: {result.error or 'the CRM returned no attachment id'}"
            await mark(WriteState.REJECTED, "", error)
            return StepResult(rejected=error)
        await mark(WriteState.DONE, result.record_id, f"uploaded ({_mb(state.size)})")
        self._settling.forget(outcome.call_id)
        self._delete(path, outcome.call_id)
        return StepResult(done=True)

    async def _not_complete(self, key: str, ended_at: float, path: Path, state: FileState, mark: Mark) -> StepResult:
        waited = self._clock() - ended_at
        what = "not there" if not state.exists else f"still being written ({state.size} bytes so far)"
        if waited > self._settings.wait_max_s:
            self._settling.forget(key)
            reason = f"recording {path} is {what} {waited:.0f} s after the call ended (recordings.wait_max_s = {self._settings.wait_max_s:g})"
            await mark(WriteState.REJECTED, "", reason)
            return StepResult(fatal=reason)
        return StepResult(wait_until=self._clock() + self._settling.wait_for(key), waiting=f"waiting for the recording {path}: {what}")

    async def _link(self, recording: CallRecording, mark: Mark, why: str) -> StepResult:
        if not recording.link:
            reason = f"recording {recording.file_name} cannot be attached{why} and recordings.url_template is not set to link it"
            await mark(WriteState.REJECTED, "", reason)
            return StepResult(fatal=reason)
        result = await self._writer.link_recording(recording)
        if not result.ok:
            error = f"recording link: {result.error or 'refused'}"
            await mark(WriteState.REJECTED, "", error)
            return StepResult(rejected=error)
        await mark(WriteState.DONE, recording.call.record_id, f"linked{why}: {recording.link}")
        self._settling.forget(recording.key)
        return StepResult(done=True)

    def _delete(self, path: Path, key: str) -> None:
        """Delete an uploaded recording when the admin asked (only ever after the CRM confirmed it)."""
        if not self._settings.delete_after_upload:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("recording of %s uploaded, but %s could not be deleted: %s", key, path, exc.strerror)


def _escapes(path: Path, directory: str) -> str:
    """Why ``path`` is not a file of ``directory`` once links are followed (a symlinked folder), or ""."""
    inside = os.path.relpath(os.path.realpath(path), os.path.realpath(directory))
    if inside == os.pardir or inside.startswith(os.pardir + os.sep) or os.path.isabs(inside):
        return f"recording {path} leads outside recordings.directory ({directory}); not read"
    return ""


def _read(path: Path, expected: FileState) -> bytes | None:
    """The file's bytes when it is still the regular file of ``expected`` (links not followed), else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != expected.size or info.st_mtime_ns != expected.mtime_ns:
            return None
        content = handle.read(expected.size + 1)
    return content if len(content) == expected.size else None


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 100 * 1024 else f"{size} bytes"
