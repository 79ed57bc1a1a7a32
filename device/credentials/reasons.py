"""Reason codes: why a credential passed or failed. A stable, documented list.

The codes are `chot.wire.Reason` (what events carry); this module describes each one.
docs/reasons.md lists the same codes for users; `chot scan` prints them in `reason`.
"""

from chot.wire import Reason

OK = Reason.OK

REASONS = {
    "ok": "every check passed",
    "no_code": "no QR code found in the image",
    "unreadable": "a QR code that cannot be read (damaged), or a text that cannot be decoded (garbled, truncated)",
    "unknown_format": "a QR code that is not a credential this terminal knows",
    "unsigned": "a plain text with no signature (an ID number, a link); fails unless policy.accept_plain",
    "format_not_accepted": "a format that policy.accept_formats does not accept",
    "bad_signature": "the signature does not verify: forged or tampered",
    "unknown_issuer": "the signer is not in the trusted issuers",
    "expired": "past its expiry, or older than policy.max_age_h",
    "not_yet_valid": "issued in the future (beyond policy.clock_skew_s)",
    "symptoms_declared": "the declaration reports symptoms",
    "contact_declared": "the declaration reports contact with a case",
    "travel_declared": "the declaration reports travel from an outbreak area",
    "denylisted": "the person is on the deny list (checked only once the credential's signature verified)",
    "outbox_full": "the outbox is full: the terminal fails closed until it drains",
    "incomplete": "a multi-part code (shc:/N/M/) whose parts did not all arrive",
    "key_usage": "DCC: the signing certificate may not sign this kind of certificate",
    "schema": "DCC: the certificate does not follow its JSON schema; SHC: the card's vc is not a health card "
              "(its type, or a FHIR Bundle with entries, missing)",
    "revoked": "the credential is revoked: its id is on the deny list, or an SHC is on its issuer's revocation list",
    "vaccination_incomplete": "DCC/SHC: the vaccination series is not complete",
    "recovery_expired": "DCC: the recovery is older than policy.dcc_recovery_days",
    "test_expired": "DCC: the negative test is older than policy.dcc_test_hours",
    "test_positive": "DCC: the test result is positive",
    "manual": "recorded by a guard: a person checked on paper",
    "clock_behind": "the terminal's clock reads before its time floor (set back, or lost): time checks fail closed",
    "bad_validity": "the credential's own times are absurd: before 1970, after the year 9999, expiring before "
                    "it was issued, or valid for longer than its format allows",
    "see_guard": "an identity claim (a chip ID card's QR, a PC-Covid code: no signature): the guard checks the "
                 "person and confirms with the button (policy.accept_cccd / accept_pccovid)",
    "guard_confirmed": "the guard confirmed a see_guard event with the button: its own event, refers_to the first",
    "bad_id_number": "an ID card or PC-Covid code whose ID number is wrong: length, province code, century/sex "
                     "digit or birth-year digits that do not match the card (the detail says which)",
    "bad_date": "an ID card or PC-Covid code with a date that is not a real date, a birth in the future, or an "
                "issue date before the birth or in the future",
    "malformed": "an ID card or PC-Covid code with the wrong number of '|' fields or a field of the wrong shape "
                 "(the detail says which)",
    "dsc_expired": "DCC: the signing certificate (DSC) has expired at the evaluation time (the signature itself "
                   "verifies)",
    "dsc_not_yet_valid": "DCC: the signing certificate (DSC) is not valid yet at the evaluation time (the signature "
                         "itself verifies)",
    "unknown_value": "DCC: a coded field (disease, vaccine, manufacturer, prophylaxis, test type, test device, test "
                     "result, country) holds a code that is not in the EU value sets (the detail says which)",
}


def describe(code):
    return REASONS.get(code, "unknown reason code")
