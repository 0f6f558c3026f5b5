"""Webhook signature verification with real HMAC-SHA256 values."""

import hashlib
import hmac

import pytest

from terra_integration.signature import SignatureError, compute, sign, verify

SECRET = "whsec_example"
BODY = b'{"type":"auth","status":"success"}'
T = 1723808700
# Computed independently with Python's hmac over b"1723808700." + BODY.
KNOWN_V1 = "a7f2b09385d685546253da2afb8cbab149cf54f2f209a6095b5d0f3ee9e5dc51"


def test_known_vector():
    assert compute(BODY, SECRET, T) == KNOWN_V1
    assert sign(BODY, SECRET, T) == f"t={T},v1={KNOWN_V1}"


def test_valid_signature_passes():
    verify(BODY, f"t={T},v1={KNOWN_V1}", SECRET, now=T + 10)


def test_tampered_body_fails():
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY.replace(b"success", b"failure"), f"t={T},v1={KNOWN_V1}", SECRET, now=T)


def test_wrong_secret_fails():
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, f"t={T},v1={KNOWN_V1}", "whsec_other", now=T)


def test_signature_for_other_timestamp_fails():
    # Same v1 but a moved timestamp: the timestamp is inside the signed payload.
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, f"t={T + 1},v1={KNOWN_V1}", SECRET, now=T)


@pytest.mark.parametrize("offset", [301, -301, 3600])
def test_outside_tolerance_fails(offset):
    header = sign(BODY, SECRET, T)
    with pytest.raises(SignatureError, match="window"):
        verify(BODY, header, SECRET, now=T + offset)


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_edges_of_tolerance_pass(offset):
    verify(BODY, sign(BODY, SECRET, T), SECRET, now=T + offset)


def test_milliseconds_timestamp_is_rejected():
    t_ms = T * 1000
    digest = hmac.new(SECRET.encode(), f"{t_ms}.".encode() + BODY, hashlib.sha256).hexdigest()
    with pytest.raises(SignatureError, match="window"):
        verify(BODY, f"t={t_ms},v1={digest}", SECRET, now=T)


def test_any_of_several_v1_values_may_match():
    header = f"t={T},v1={'0' * 64},v1={KNOWN_V1},v0=deadbeef"
    verify(BODY, header, SECRET, now=T)


def test_v0_alone_is_not_accepted():
    with pytest.raises(SignatureError, match="no v1"):
        verify(BODY, f"t={T},v0={KNOWN_V1}", SECRET, now=T)


def test_uppercase_hex_and_spaces_are_tolerated():
    verify(BODY, f"t={T}, v1={KNOWN_V1.upper()}", SECRET, now=T)


@pytest.mark.parametrize(
    "header, message",
    [
        (None, "missing"),
        ("", "missing"),
        (f"v1={KNOWN_V1}", "no timestamp"),
        (f"t=abc,v1={KNOWN_V1}", "not an integer"),
        (f"t={T}", "no v1"),
        ("garbage", "no timestamp"),
    ],
)
def test_malformed_headers(header, message):
    with pytest.raises(SignatureError, match=message):
        verify(BODY, header, SECRET, now=T)
