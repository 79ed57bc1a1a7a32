"""The `[policy]` settings: what is trusted and what passes (a part of the terminal config).

Plain data only (credentials/ is pure logic): `world_problems` is the one place that looks at
files, and only `check-config` and the daemon's start-up call it.
"""

from dataclasses import dataclass
from typing import Literal

from chot.config import FilePath, Settings, files_problems, setting


@dataclass(frozen=True, kw_only=True)
class PolicySettings(Settings):
    trusted_issuers: list[str] = setting(
        [], help="issuer public keys, certificates or trust lists to trust (paths)"
    )
    max_age_h: float = setting(24.0, min=0.0, max=24.0 * 365, help="a declaration older than this fails (expired)")
    clock_skew_s: float = setting(300.0, min=0.0, max=86400.0, help="tolerance for clocks running ahead")
    clock_floor_tolerance_s: float = setting(
        300.0, min=0.0, max=86400.0,
        help="the clock reading more than this before the terminal's time floor (its latest event time, the "
        "newest signed update's issue time) is behind: events flagged, time checks fail clock_behind",
    )
    max_list_age_h: float = setting(
        72.0, min=0.0, max=24.0 * 365,
        help="trusted issuers and deny list from the collector issued longer ago than this make the terminal "
        "stale (status and status LED); 0: no age limit (their expiry still counts)",
    )
    fail_on_symptoms: bool = setting(True, help="a declaration with symptoms fails")
    fail_on_contact: bool = setting(True, help="a declaration with contact with a case fails")
    fail_on_travel: bool = setting(False, help="a declaration with travel from an outbreak area fails")
    accept_plain: bool = setting(False, help="unsigned QR texts (an ID, a link) pass")
    paper_window_s: float = setting(
        60.0, min=0.0, max=600.0,
        help="a valid staff card opens a window this long for one paper declaration (source paper); 0: staff "
        "cards are refused",
    )
    accept_formats: list[Literal["native", "dcc", "shc", "plain"]] = setting(
        ["native", "dcc", "shc"], help="signed formats accepted"
    )
    accept_cccd: Literal["see_guard", "pass", "fail"] = setting(
        "see_guard",
        help="a chip ID card's QR (CCCD, unsigned: an identity claim): see_guard = FAIL see_guard with the "
        "\"see the guard\" signal, the guard's button then records a confirmation; pass; fail",
    )
    accept_pccovid: Literal["see_guard", "pass", "fail"] = setting(
        "see_guard", help="a PC-Covid personal QR (unsigned: an identity claim): see_guard, pass or fail"
    )
    guard_window_s: float = setting(
        120.0, min=1.0, max=3600.0,
        help="after a see_guard event, the guard's button confirms it (its own event, referring to the first) "
        "for this long; later, or with none waiting, the button records a manual pass",
    )
    denylist: FilePath | None = setting(
        None, help="deny list file (chot-denylist-v2: hashes of revoked credential ids and of denied persons)"
    )
    dcc_schema_dir: FilePath | None = setting(
        None,
        help="the ehn-dcc-schema releases (one folder per version); unset: $CHOT_DCC_SCHEMA_DIR or "
        "/etc/chot/dcc-schema or /usr/share/chot/dcc-schema",
    )
    dcc_valueset_dir: FilePath | None = setting(
        None,
        help="the EU DCC value sets (eu-dcc-valuesets JSON files and a rapid test device list); unset: "
        "$CHOT_DCC_VALUESET_DIR or /etc/chot/dcc-valuesets or /usr/share/chot/dcc-valuesets",
    )
    dcc_require_complete_vaccination: bool = setting(True, help="DCC: vaccination must be complete")
    dcc_recovery_days: int = setting(180, min=0, max=3650, help="DCC: recovery valid for")
    dcc_test_hours: int = setting(72, min=0, max=720, help="DCC: negative test valid for")
    shc_crl: list[str] = setting([], help="SHC: revocation list files (issuer CRLs)")
    shc_require_complete_vaccination: bool = setting(
        True, help="SHC: an immunization card must show a complete series (2 doses, or 1 of Janssen)"
    )

    def world_problems(self, name):
        checks = [(f"{name}.trusted_issuers[{i}]", p, False, None) for i, p in enumerate(self.trusted_issuers)]
        checks.append((f"{name}.denylist", self.denylist, False, False))
        checks.append((f"{name}.dcc_schema_dir", self.dcc_schema_dir, False, True))
        checks.append((f"{name}.dcc_valueset_dir", self.dcc_valueset_dir, False, True))
        checks += [(f"{name}.shc_crl[{i}]", p, False, False) for i, p in enumerate(self.shc_crl)]
        problems = files_problems(checks)
        return problems + self._dcc_folder_problems(name, {p.split(":")[0] for p in problems})

    def _dcc_folder_problems(self, name, reported):
        """What is wrong inside the DCC schema and value set folders (when they exist)."""
        out = []
        if self.dcc_schema_dir and f"{name}.dcc_schema_dir" not in reported:
            from device.credentials import dcc  # noqa: PLC0415  (jsonschema, cryptography: only when set)

            if not dcc.schema_releases(self.dcc_schema_dir):
                out.append(f"{name}.dcc_schema_dir: found {str(self.dcc_schema_dir)!r}; allowed: a folder of "
                           "ehn-dcc-schema releases, one folder per version (e.g. 1.3.2/DCC.combined-schema.json): "
                           "it holds none")
        if self.dcc_valueset_dir and f"{name}.dcc_valueset_dir" not in reported:
            from device.credentials import dcc_valuesets  # noqa: PLC0415

            problem = dcc_valuesets.folder_problem(self.dcc_valueset_dir)
            if problem:
                out.append(f"{name}.dcc_valueset_dir: {problem}")
        return out
