"""The account rules as plain functions: email normalisation and validation, the password list,
the networks kept of an address. No network, no service."""

from __future__ import annotations

import pytest

from kit.errors import ValidationError
from services.users import accounts, origins
from tests.users.conftest import full_width


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
        (full_width("ada") + "@" + full_width("example.com"), "ada@example.com"),  # NFKC
        ("ﬁona@example.com", "fiona@example.com"),  # a ligature (NFKC)
        ("zoë@example.com", "zoë@example.com"),
        ("zoe\u0308@example.com", "zoë@example.com"),  # decomposed: the same address
        ("info@xn--bcher-kva.de", "info@bücher.de"),  # an IDNA domain, stored in Unicode
        ("info@BÜCHER.de", "info@bücher.de"),
    ],
)
def test_an_email_is_stored_in_one_normal_form(typed: str, stored: str) -> None:
    assert accounts.normalize_email(typed) == stored
    assert accounts.normalize_email(stored) == stored  # and that form is stable
    assert accounts.email_for_lookup(typed) == stored


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada..b@example.com",
        "ada@exa_mple.com",
        "ada@host.local",
        "ada@localhost",
        '"ada"@example.com',
        "ada@[127.0.0.1]",
        "ada\u0000@example.com",
        "ada\n@example.com",
        "a" * 250 + "@example.com",
        "a" * 100_000,
    ],
)
def test_an_invalid_email_is_a_validation_error_naming_the_field(typed: str) -> None:
    with pytest.raises(ValidationError) as caught:
        accounts.normalize_email(typed)
    assert caught.value.details["field"] == "email"
    assert len(caught.value.message) < 200  # no echo of a long input


def test_an_address_only_the_old_rule_accepted_can_still_be_looked_up() -> None:
    # Such accounts exist (sign-up accepted them before email-validator); their owners must
    # still be able to sign in, though no new account can be made with them.
    for legacy in ("ada..b@example.com", "ada@exa_mple.com", "ada@host.local"):
        assert accounts.email_for_lookup(legacy.upper()) == legacy
        with pytest.raises(ValidationError):
            accounts.normalize_email(legacy)
    for garbage in ("ada", "ada@example", "a b@example.com", "ada\u0000@example.com"):
        with pytest.raises(ValidationError):
            accounts.email_for_lookup(garbage)


@pytest.mark.parametrize(
    "password", ["password1", "PASSWORD1", " qwerty123 ", full_width("password1"), "trustno1"]
)
def test_common_passwords_are_refused_whatever_their_case_or_width(password: str) -> None:
    with pytest.raises(ValidationError) as caught:
        accounts.check_password_policy(password, min_length=8, max_length=256)
    assert caught.value.details["field"] == "password"


def test_the_common_password_list_is_the_long_one_and_ordinary_passphrases_pass() -> None:
    assert len(accounts.common_passwords()) >= 10_000
    for password in ("correct horse battery", "benchmark password 1", "tr0ub4dor&3-violet"):
        accounts.check_password_policy(password, min_length=8, max_length=256)


@pytest.mark.parametrize(
    ("ip", "unit", "network"),
    [
        ("203.0.113.77", "203.0.113.77/32", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("::ffff:198.51.100.9", "198.51.100.9/32", "198.51.100.0/24"),
        ("", "", ""),
        ("not an address", "", ""),
    ],
)
def test_an_address_is_limited_per_unit_and_shown_only_as_a_network(ip: str, unit: str, network: str) -> None:
    assert origins.limit_unit(ip) == unit
    assert origins.analytics_network(ip) == network
