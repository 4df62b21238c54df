"""The forms a number is searched in: compact first, typed forms for exact-text CRMs."""

import pytest

from crmlookup.phone import normalise


def test_compact_forms_most_likely_first_without_repeats():
    assert normalise("+34928000000", "ES").variants() == ["+34928000000", "928000000", "0034928000000", "34928000000"]
    # A region with a trunk prefix: the national number with and without it.
    assert normalise("020 7946 0000", "GB").variants() == ["+442079460000", "2079460000", "02079460000", "00442079460000", "442079460000"]
    # The US trunk prefix "1" makes the national form with it equal to the E.164 digits: listed once.
    us = normalise("(202) 555-0199", "US").variants()
    assert len(us) == len(set(us)) == 4


@pytest.mark.parametrize("caller", ["+34928000000", "928000000", "0034928000000", "+34 928-00-00-00"])
def test_every_caller_id_form_gives_the_same_forms(caller):
    assert normalise(caller, "ES").variants() == normalise("+34928000000", "ES").variants()


def test_typed_forms_cover_what_admins_type_and_repeat_no_compact_form():
    number = normalise("+34928000000", "ES")
    typed = number.typed_forms()
    for form in ("928 00 00 00", "+34 928 00 00 00", "+34-928-000-000", "928 000 000"):
        assert form in typed
    assert not set(typed) & set(number.variants())
    assert len(typed) == len(set(typed))


def test_typed_forms_use_the_regions_own_grouping():
    assert normalise("02079460000", "GB").typed_forms() == ["020 7946 0000", "+44 20 7946 0000", "+44-20-7946-0000"]
    assert normalise("2025550199", "US").typed_forms() == ["(202) 555-0199", "+1 202-555-0199", "+1-202-555-0199"]
