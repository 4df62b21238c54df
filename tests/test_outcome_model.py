"""The call outcome built from what the hangup handler reads off the channel."""

import pytest

from dialplan.outcome import CHANNEL_READINGS, CallOutcome, InvalidOutcome, extension_of, outcome_from_channel, reading_expression

NOW = 1_700_000_100.0


def build(readings=None, **kwargs):
    args = dict(call_id="1700000000.7", caller="+34928000000", readings=readings or {}, ended_at=NOW, region="ES")
    args.update(kwargs)
    return outcome_from_channel(**args)


def test_answered_dial_gives_talk_time_and_who_answered():
    o = build({"dial_status": "ANSWER", "answered_ms": "42300", "answered_s": "42", "peer_number": "102", "cdr_start": "1700000050.25"})
    assert o.answered and o.answered_extension == "102"
    assert o.talk_seconds == 42  # to the nearest second
    assert o.started_at == 1700000050.25
    assert o.answered_at == NOW - 42
    assert o.caller_e164 == "+34928000000"


def test_missed_call():
    o = build({"dial_status": "NOANSWER", "peer_number": "101", "answered_s": "17"})
    assert not o.answered
    assert o.answered_extension == ""  # the extension Dial tried did not answer
    assert o.talk_seconds == 0 and o.answered_at is None


@pytest.mark.parametrize("readings", [
    {"dial_status": "ANSWER"},  # no time at all
    {"dial_status": "ANSWER", "answered_ms": "0"},
    {"dial_status": "ANSWER", "answered_ms": "300"},  # rounds to 0
    {"dial_status": "ANSWER", "answered_s": "0"},
    {"dial_status": "ANSWER", "answered_s": "-5"},
    {"dial_status": "ANSWER", "answered_ms": "nan"},
    {"dial_status": "ANSWER", "answered_ms": "1e400"},
])
def test_an_answered_call_never_lasts_zero_seconds(readings):
    assert build(readings).talk_seconds == 1


def test_queue_member_counts_as_answered_with_cdr_talk_time():
    # Dial to the owner timed out, then the queue connected agent 102.
    o = build({"dial_status": "NOANSWER", "member_interface": "PJSIP/102", "cdr_billsec": "30.500000"})
    assert o.answered and o.answered_extension == "102" and o.talk_seconds == 31


def test_explicit_answered_by_wins():
    o = build({"dial_status": "ANSWER", "peer_number": "101", "answered_by": "205", "member_interface": "PJSIP/102"})
    assert o.answered_extension == "205"


@pytest.mark.parametrize("interface, extension", [
    ("PJSIP/101", "101"),
    ("SIP/101-0000001", "101-0000001"),
    ("Local/102@agents/n", "102"),
    ("102@from-internal", "102"),
    ("103", "103"),
    ("PJSIP/101&PJSIP/666", ""),  # dial-string syntax is never an extension
    ("PJSIP/10 1", ""),
    ("", ""),
    ("PJSIP/" + "9" * 65, ""),
])
def test_extension_of(interface, extension):
    assert extension_of(interface) == extension


def test_route_snapshot_is_kept():
    o = build({"route_status": "owner", "owner_id": "u1001", "module": "Leads", "record_id": "L-1", "route_extension": "101", "record_name": "Marta"})
    assert (o.route.status, o.route.owner_id, o.route.module, o.route.record_id, o.route.extension, o.route.record_name) == ("OWNER", "u1001", "Leads", "L-1", "101", "Marta")
    assert o.route.has_record


def test_no_crm_variables_at_all():
    """The caller hung up during route (AGIEXITONHANGUP closed it): nothing was set."""
    o = build({"dial_status": ""})
    assert o.route.status == "" and not o.route.has_record
    assert not o.answered


@pytest.mark.parametrize("caller", ["anonymous", "", "unknown", "not a number", "+" + "1" * 60])
def test_withheld_or_bad_caller_has_no_e164(caller):
    o = build(caller=caller)
    assert o.caller_e164 == ""


@pytest.mark.parametrize("call_id", ["", "   ", "a b", "x\ny", "1" * 200, "id;DROP"])
def test_unusable_unique_id_is_refused(call_id):
    with pytest.raises(InvalidOutcome):
        build(call_id=call_id)


def test_start_time_fallbacks():
    # A CDR start that is garbage or from another day: the unique id's timestamp.
    assert build({"cdr_start": "garbage"}).started_at == 1700000000.0
    assert build({"cdr_start": "1600000000.0"}).started_at == 1700000000.0
    # A unique id with a system name prefix.
    assert build(call_id="pbx1-1700000001.3").started_at == 1700000001.0
    # No usable id timestamp: the dialled time, then the end itself.
    assert build({"dialed_ms": "20000"}, call_id="abc").started_at == NOW - 20
    assert build({}, call_id="abc").started_at == NOW


def test_a_huge_caller_id_is_bounded():
    o = build(caller="9" * 4000)
    assert len(o.caller) == 128 and o.caller_e164 == ""


def test_hostile_values_stay_data():
    o = build({"linked_id": "x y\"z", "dial_status": "ANSWER\nEXEC", "record_name": 'Evil "name" ${SHELL(rm)}'})
    assert o.linked_id == ""  # not an id: dropped
    assert not o.answered  # "ANSWER\nEXEC" is not ANSWER
    assert o.route.record_name == 'Evil "name" ${SHELL(rm)}'


def test_round_trips_through_a_dict():
    o = build({"dial_status": "ANSWER", "route_status": "OWNER", "module": "Deals", "record_id": "D-1"})
    assert CallOutcome.from_dict(o.to_dict()) == o


def test_every_reading_is_a_bounded_expression():
    for name in CHANNEL_READINGS:
        expression = reading_expression(name)
        limit = {"recording_url": 256, "recording": 256}.get(name, 64)
        assert expression.startswith("${") and expression.endswith(f":0:{limit}}}")


@pytest.mark.parametrize(
    "url, kept",
    [
        ("https://pbx.example.com/rec/1700000000.1.wav", True),
        ("http://10.0.0.5/monitor/a%20b.mp3", True),
        ("ftp://pbx/rec.wav", False),
        ("https://pbx/rec.wav\nSET VARIABLE X 1", False),
        ("https://pbx/a b.wav", False),
        ('https://pbx/"onload=x', False),
        ("javascript:alert(1)", False),
    ],
)
def test_a_recording_url_is_kept_only_when_it_is_a_plain_http_address(url, kept):
    o = build({"dial_status": "ANSWER", "recording_url": url})
    assert o.recording_url == (url if kept else "")


MONITOR = "/var/spool/asterisk/monitor"


@pytest.mark.parametrize(
    "value, kept",
    [
        ("1700000000.7.wav", "1700000000.7.wav"),
        ("2026/12/02/1700000000.7.WAV", "2026/12/02/1700000000.7.WAV"),
        (f"{MONITOR}/1700000000.7.gsm", "1700000000.7.gsm"),
        ("  1700000000.7.wav ", "1700000000.7.wav"),
    ],
)
def test_a_recording_inside_the_directory_is_kept_by_its_name(value, kept):
    o = build({"dial_status": "ANSWER", "recording": value}, recordings_dir=MONITOR)
    assert (o.recording, o.recording_problem) == (kept, "")


@pytest.mark.parametrize(
    "value, why",
    [
        ("../../../etc/shadow.wav", "'..'"),
        ("sub/../../x.wav", "'..'"),
        ("/etc/crmroute/secret.wav", "not inside recordings.directory"),
        (f"{MONITOR}/../secret.wav", "not inside recordings.directory"),
        (f"{MONITOR}-other/x.wav", "not inside recordings.directory"),
        ("1700000000.7.wav\nSET VARIABLE X 1", "control character"),
        ("1700000000.7.wav\n", "control character"),
        ("1700000000.7\x00.wav", "control character"),
        ("1700000000.7.wav\u2028", "control character"),
        ("x.wav;rm -rf", "characters"),
        ("crmroute.toml", "not an audio file"),
        (".hidden.wav", "characters"),
        ("a//b.wav", "empty"),
        ("x" * 300 + ".wav", "longer than 255"),
    ],
)
def test_a_hostile_recording_name_is_refused_with_its_reason(value, why):
    o = build({"dial_status": "ANSWER", "recording": value}, recordings_dir=MONITOR)
    assert o.recording == ""
    assert o.recording_problem.startswith("CRM_RECORDING refused: ") and why in o.recording_problem, o.recording_problem


def test_no_recording_name_means_neither_a_recording_nor_a_problem():
    o = build({"dial_status": "ANSWER", "recording": "   "})
    assert (o.recording, o.recording_problem) == ("", "")
    assert CallOutcome.from_dict({k: v for k, v in o.to_dict().items() if not k.startswith("recording")}) == o
