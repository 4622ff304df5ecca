"""canonicalize(): parsing, stage mapping, currency, every rejection reason, reconciliation."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.models import DEFAULT_STAGES
from config.schema import FIELD_NAMES, FX_COLUMNS, ROW_ID_COLUMN, SOURCE_COLUMN
from transforms.canonical import CanonicalResult, canonicalize

BERLIN = ZoneInfo("Europe/Berlin")
STAGE_MAP = {"Contract Sent": "Closing", "closed won": "Won"}
BASE = {"opportunity_id": "OPP-1", "stage": "Proposal", "created_date": "2026-01-05"}
DECIMAL_HINT = " (it has a decimal comma: set decimal: ',' on the source)"


def run(rows: list[dict], *, tz=BERLIN, date_format: str | None = None, rates=None,
        currency: str = "USD") -> CanonicalResult:
    frame = pd.DataFrame(rows)
    return canonicalize(frame, source="crm", stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP, tz=tz,
                        date_format=date_format, reporting_currency=currency, rates=rates)


def one(**fields) -> dict:
    """The loaded row for BASE + fields (fails if the row was rejected)."""
    res = run([{**BASE, **fields}])
    assert res.rejected.empty, res.rejected["reason"].tolist()
    assert len(res.loaded) == 1
    return res.loaded.iloc[0].to_dict()


def reason_of(**fields) -> str:
    res = run([{**BASE, **fields}])
    assert res.loaded.empty
    assert len(res.rejected) == 1
    return res.rejected.iloc[0]["reason"]


def check_reconciles(res: CanonicalResult) -> None:
    assert res.rows_read == len(res.loaded) + len(res.rejected)


# ----------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12000", 12000.0),
        ("12000.50", 12000.5),
        ("$12,000", 12000.0),
        ("12,000.00", 12000.0),
        ("1,000,000.5", 1000000.5),
        ("USD 1,000", 1000.0),
        ("1,000 USD", 1000.0),
        (" 12000 ", 12000.0),
        ("0", 0.0),
        (12000, 12000.0),
        (12000.5, 12000.5),
        (np.int64(7), 7.0),
        (np.float64(7.25), 7.25),
    ],
)
def test_amount_parses(raw, expected):
    row = one(amount=raw)
    assert row["amount"] == expected
    assert row["currency"] == "USD"


def test_an_amount_in_another_currency_is_converted_never_read_as_the_reporting_one():
    res = run([{**BASE, "amount": "€ 950"}], rates={"EUR": 1.1})  # no currency column: the mark says EUR
    assert res.loaded.loc[0, "amount"] == pytest.approx(1045.0)
    assert "currency 'EUR' has no rate to USD" in reason_of(amount="€ 950")


@pytest.mark.parametrize("raw", ["", "   ", None, np.nan])
def test_blank_amount_is_nan_and_loads(raw):
    row = one(amount=raw)
    assert math.isnan(row["amount"])
    assert pd.isna(row["currency"])


# ----------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("raw", "expected", "tz"),
    [
        ("2026-04-15", dt.date(2026, 4, 15), BERLIN),
        ("2026-04-15T10:00:00", dt.date(2026, 4, 15), BERLIN),  # naive: taken as local
        ("2026-04-15T10:00:00Z", dt.date(2026, 4, 15), BERLIN),
        # UTC late evening is the next day in Berlin (+01:00 in winter, +02:00 in summer)
        ("2026-01-04T23:30:00Z", dt.date(2026, 1, 5), BERLIN),
        ("2026-06-30T22:30:00Z", dt.date(2026, 7, 1), BERLIN),
        ("2026-01-04T23:30:00Z", dt.date(2026, 1, 4), ZoneInfo("UTC")),
        # an offset east of Berlin: just after midnight there is still the previous day in Berlin
        ("2026-01-05T00:30:00+02:00", dt.date(2026, 1, 4), BERLIN),
        # Salesforce's offset without a colon, with milliseconds
        ("2026-01-04T23:30:00.000+0000", dt.date(2026, 1, 5), BERLIN),
        ("2026-01-05T03:00:00.000+0000", dt.date(2026, 1, 4), ZoneInfo("America/Los_Angeles")),
        (dt.date(2026, 3, 1), dt.date(2026, 3, 1), BERLIN),
        (dt.datetime(2026, 3, 1, 23, 59), dt.date(2026, 3, 1), BERLIN),
        (pd.Timestamp("2026-03-01T23:30:00", tz="UTC"), dt.date(2026, 3, 2), BERLIN),
    ],
)
def test_dates_parse_into_config_timezone(raw, expected, tz):
    res = run([{**BASE, "created_date": raw}], tz=tz)
    assert res.rejected.empty, res.rejected["reason"].tolist()
    value = res.loaded.loc[0, "created_date"]
    assert value == pd.Timestamp(expected)
    assert value == value.normalize()  # a calendar date at midnight
    assert res.loaded["created_date"].dtype == "datetime64[ns]"


def test_mixed_aware_and_naive_datetime_objects_in_one_column():
    rows = [
        {**BASE, "opportunity_id": "a", "created_date": pd.Timestamp("2026-01-04T23:30", tz="UTC")},
        {**BASE, "opportunity_id": "b", "created_date": dt.datetime(2026, 1, 4, 12, 0)},
        {**BASE, "opportunity_id": "c", "created_date": dt.date(2026, 1, 3)},
    ]
    res = run(rows)
    assert res.loaded["created_date"].tolist() == [
        pd.Timestamp("2026-01-05"), pd.Timestamp("2026-01-04"), pd.Timestamp("2026-01-03")
    ]


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("05/01/2026", "%d/%m/%Y", dt.date(2026, 1, 5)),
        ("01/05/2026", "%m/%d/%Y", dt.date(2026, 1, 5)),
        ("5.1.2026", "%d.%m.%Y", dt.date(2026, 1, 5)),
        ("2026-01-05", "%d/%m/%Y", dt.date(2026, 1, 5)),  # ISO still accepted next to the format
    ],
)
def test_date_format(raw, fmt, expected):
    res = run([{**BASE, "created_date": raw, "close_date": raw}], date_format=fmt)
    assert res.rejected.empty, res.rejected["reason"].tolist()
    assert res.loaded.loc[0, "created_date"] == pd.Timestamp(expected)
    assert res.loaded.loc[0, "close_date"] == pd.Timestamp(expected)


def test_date_format_names_the_format_in_the_reason():
    res = run([{**BASE, "close_date": "2026/31/31"}], date_format="%d/%m/%Y")
    assert res.rejected.loc[0, "reason"] == (
        "close_date '2026/31/31' is not a date (expected '%d/%m/%Y' or YYYY-MM-DD)"
    )


def test_optional_dates_may_be_blank():
    row = one(close_date="", stage_entered_date=None, last_activity_date=" ", next_step_date=np.nan)
    for f in ("close_date", "stage_entered_date", "last_activity_date", "next_step_date"):
        assert pd.isna(row[f])


# ----------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True), ("TRUE", True), ("True", True), ("yes", True), ("Yes", True), ("Y", True),
        ("y", True), ("1", True), (1, True), (1.0, True), (True, True), (np.bool_(True), True),
        ("false", False), ("FALSE", False), ("no", False), ("NO", False), ("n", False), ("N", False),
        ("0", False), (0, False), (0.0, False), (False, False), ("", False), (None, False),
        (np.nan, False), ("  yes  ", True),
    ],
)
def test_booleans(raw, expected):
    row = one(budget=raw, authority=raw, need=raw, timeline=raw)
    assert [row[f] for f in ("budget", "authority", "need", "timeline")] == [expected] * 4
    assert all(isinstance(row[f], bool | np.bool_) for f in ("budget", "need"))


def test_missing_bool_columns_default_false():
    row = one()
    assert (row["budget"], row["authority"], row["need"], row["timeline"]) == (False, False, False, False)


# ----------------------------------------------------------------------------- stages, status, deal_type


@pytest.mark.parametrize(
    ("raw", "stage", "status"),
    [
        ("Contract Sent", "Closing", "open"),  # via stage_map
        ("contract sent", "Closing", "open"),  # stage_map keys match any case
        ("CONTRACT SENT ", "Closing", "open"),
        ("Closed Won", "Won", "won"),
        ("Proposal", "Proposal", "open"),  # a configured name directly
        ("proposal", "Proposal", "open"),
        ("LOST", "Lost", "lost"),
        ("Lead generation", "Lead generation", "open"),
    ],
)
def test_stage_mapping_and_status_from_stage(raw, stage, status):
    row = one(stage=raw)
    assert (row["stage"], row["status"]) == (stage, status)


@pytest.mark.parametrize(("raw", "status"), [("won", "won"), ("LOST", "lost"), (" Open ", "open"), ("", "lost")])
def test_given_status_wins_over_stage_blank_falls_back(raw, status):
    row = one(stage="Lost", status=raw)
    assert row["status"] == status


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("new", "new"), ("New", "new"), ("existing", "existing"), ("EXISTING", "existing"),
        ("newbusiness", "new"), ("NewBusiness", "new"), ("existingbusiness", "existing"),
        ("New Business", "new"), ("", "new"), (None, "new"),
    ],
)
def test_deal_type(raw, expected):
    assert one(deal_type=raw)["deal_type"] == expected


# ----------------------------------------------------------------------------- currency


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("100", "EUR", 110.0),
        ("100", "eur", 110.0),
        ("100", "GBP", 125.0),
        ("100", "USD", 100.0),
        ("100", "", 100.0),
        ("$1,000", "usd", 1000.0),
    ],
)
def test_currency_conversion(amount, currency, expected):
    res = run([{**BASE, "amount": amount, "currency": currency}], rates={"EUR": 1.1, "gbp": 1.25})
    assert res.rejected.empty, res.rejected["reason"].tolist()
    assert res.loaded.loc[0, "amount"] == pytest.approx(expected)
    assert res.loaded.loc[0, "currency"] == "USD"


def test_other_reporting_currency():
    res = run([{**BASE, "amount": "100", "currency": "USD"}], currency="EUR", rates={"USD": 0.9})
    assert res.loaded.loc[0, "amount"] == pytest.approx(90.0)
    assert res.loaded.loc[0, "currency"] == "EUR"


# ----------------------------------------------------------------------------- rejections


STAGE_HINT = "is not a configured stage (map it in the source's stage_map or add it to pipeline.stages)"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"amount": "abc"}, "amount 'abc' is not a number"),
        ({"amount": "12k"}, "amount '12k' is not a number"),
        ({"amount": "12000,50"}, "amount '12000,50' is not a number" + DECIMAL_HINT),  # never guessed
        ({"amount": "1.000,50"}, "amount '1.000,50' is not a number" + DECIMAL_HINT),
        ({"amount": "-5"}, "amount '-5' is negative"),
        ({"amount": "(500)"}, "amount '(500)' is negative"),
        ({"amount": "1e16"}, "amount '1e16' is too large"),
        ({"amount": "inf"}, "amount 'inf' is too large"),
        ({"stage": "Negotiation"}, f"stage 'Negotiation' {STAGE_HINT}"),
        ({"stage": ""}, "stage is missing"),
        ({"stage": None}, "stage is missing"),
        ({"opportunity_id": ""}, "opportunity_id is missing"),
        ({"opportunity_id": None}, "opportunity_id is missing"),
        ({"created_date": ""}, "created_date is missing"),
        ({"created_date": None}, "created_date is missing"),
        ({"status": "pending"}, "status 'pending' is not open, won or lost"),
        ({"created_date": "2026-13-01"}, "created_date '2026-13-01' is not a date (expected YYYY-MM-DD)"),
        ({"close_date": "next week"}, "close_date 'next week' is not a date (expected YYYY-MM-DD)"),
        ({"created_date": "1800-01-01"}, "created_date 1800-01-01 is out of range (1900-2200)"),
        ({"close_date": "9999-12-31"}, "close_date 9999-12-31 is out of range (1900-2200)"),
        ({"close_date": "9999-12-31T00:00:00Z"}, "close_date 9999-12-31 is out of range (1900-2200)"),
        ({"close_date": dt.datetime(9999, 12, 31)}, "close_date 9999-12-31 is out of range (1900-2200)"),
        ({"budget": "maybe"}, "budget 'maybe' is not a yes/no value"),
        ({"timeline": "2"}, "timeline '2' is not a yes/no value"),
        ({"deal_type": "renewal"}, "deal_type 'renewal' is not new or existing"),
        ({"currency": "US$"}, "currency 'US$' is not an ISO 4217 code"),
        ({"currency": "dollars"}, "currency 'DOLLARS' is not an ISO 4217 code"),
        ({"currency": "JPY", "amount": "5"}, "currency 'JPY' has no rate to USD (add it to inputs.rates)"),
        ({"_error": "row has 9 fields but the header has 8"}, "row has 9 fields but the header has 8"),
    ],
)
def test_every_rejection_reason(fields, reason):
    res = run([{**BASE, **fields}, {**BASE, "opportunity_id": "GOOD"}], rates={"EUR": 1.1})
    check_reconciles(res)
    assert res.loaded["opportunity_id"].tolist() == ["GOOD"]  # the bad row never hides the good one
    assert res.rejected["reason"].tolist() == [reason]
    rej = res.rejected.iloc[0]
    assert (rej["source"], rej["row"]) == ("crm", 2)


def test_multiple_reasons_are_joined_in_column_order():
    reason = reason_of(amount="abc", stage="Nope", created_date="", budget="perhaps")
    assert reason == (
        f"stage 'Nope' {STAGE_HINT}; amount 'abc' is not a number; created_date is missing; "
        "budget 'perhaps' is not a yes/no value"
    )


def test_connector_error_comes_first_and_joins_others():
    assert reason_of(_error="row has 9 fields but the header has 8", amount="x") == (
        "row has 9 fields but the header has 8; amount 'x' is not a number"
    )


def test_unknown_stage_names_the_pipeline_when_given():
    assert reason_of(stage="Contract Sent X", _pipeline="Renewals") == (
        f"stage 'Contract Sent X' in pipeline 'Renewals' {STAGE_HINT}"
    )


def test_duplicate_ids_keep_the_first():
    rows = [
        {**BASE, "opportunity_id": "A", "name": "first", "_row": 2},
        {**BASE, "opportunity_id": "B", "name": "other", "_row": 3},
        {**BASE, "opportunity_id": "A", "name": "second", "_row": 7},
        {**BASE, "opportunity_id": " A ", "name": "third", "_row": 9},
    ]
    res = run(rows)
    check_reconciles(res)
    assert res.loaded[["opportunity_id", "name"]].values.tolist() == [["A", "first"], ["B", "other"]]
    assert res.rejected["row"].tolist() == [7, 9]
    assert res.rejected["reason"].tolist() == [
        "duplicate opportunity_id 'A' (first seen on row 2)",
        "duplicate opportunity_id 'A' (first seen on row 2)",
    ]
    assert res.rejected["name"].tolist() == ["second", "third"]


def test_a_rejected_first_row_does_not_make_the_good_one_a_duplicate():
    rows = [{**BASE, "opportunity_id": "A", "amount": "bad"}, {**BASE, "opportunity_id": "A", "amount": "5"}]
    res = run(rows)
    assert res.loaded["amount"].tolist() == [5.0]
    assert res.rejected["reason"].tolist() == ["amount 'bad' is not a number"]


def test_rejected_frame_has_source_row_reason_then_raw_values():
    rows = [
        {"opportunity_id": "X1", "stage": "Weird", "amount": "$1,000", "created_date": "2026-01-05",
         "owner": "  Ann  ", "_row": 14},
    ]
    res = run(rows)
    rej = res.rejected
    assert list(rej.columns) == ["source", "row", "reason", "opportunity_id", "owner", "stage", "amount",
                                 "created_date"]
    assert rej.iloc[0].to_dict() == {
        "source": "crm", "row": 14, "reason": f"stage 'Weird' {STAGE_HINT}", "opportunity_id": "X1",
        "owner": "Ann", "stage": "Weird", "amount": "$1,000", "created_date": "2026-01-05",
    }


def test_row_numbers_default_to_data_rows_after_the_header():
    res = run([{**BASE, "opportunity_id": str(i), "amount": "x" if i % 2 else "1"} for i in range(5)])
    assert res.rejected["row"].tolist() == [3, 5]


def test_loaded_columns_and_row_id():
    res = run([{**BASE, "owner": "Ann", "amount": "10"}])
    assert list(res.loaded.columns) == [*FIELD_NAMES, *FX_COLUMNS, SOURCE_COLUMN, ROW_ID_COLUMN]
    row = res.loaded.iloc[0]
    assert (row[SOURCE_COLUMN], row[ROW_ID_COLUMN], row["owner"]) == ("crm", "crm:OPP-1", "Ann")


def test_empty_records_reconcile():
    res = canonicalize(pd.DataFrame({"_row": pd.Series(dtype=int)}), source="crm", stages=list(DEFAULT_STAGES),
                       stage_map={}, tz=BERLIN)
    assert (res.rows_read, len(res.loaded), len(res.rejected)) == (0, 0, 0)
    assert list(res.rejected.columns)[:3] == ["source", "row", "reason"]


def test_reconciliation_on_a_mixed_batch():
    rows = [{**BASE, "opportunity_id": str(i % 40), "amount": ["1", "x", "", "-1"][i % 4]} for i in range(100)]
    res = run(rows)
    check_reconciles(res)
    assert res.rows_read == 100
    assert len(res.loaded) == 20  # ids 0..39; "x" and "-1" rows rejected; later repeats are duplicates
    assert set(res.loaded["opportunity_id"]) == {str(i) for i in range(40) if i % 4 in (0, 2)}


# ----------------------------------------------------------------------------- property


CELL = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "12,000", "$5", "2026-01-05", "2026-01-05T23:00:00Z", "yes", "n", "Won",
                     "Contract Sent", "new", "EUR", "9999-12-31", "nan", "NaN", "(1)", "=1+1"]),
)
RECORD_FIELDS = [*FIELD_NAMES, "_error"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.fixed_dictionaries({f: CELL for f in RECORD_FIELDS}), max_size=8))
def test_random_rows_never_crash_and_always_reconcile(rows):
    frame = pd.DataFrame(rows, columns=RECORD_FIELDS)
    res = canonicalize(frame, source="fuzz", stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP, tz=BERLIN,
                       rates={"EUR": 1.1})
    assert res.rows_read == len(rows) == len(res.loaded) + len(res.rejected)
    assert all(isinstance(r, str) and r.strip() for r in res.rejected["reason"])
    assert res.loaded["opportunity_id"].is_unique
    assert res.loaded["created_date"].notna().all()
    assert res.loaded["stage"].isin([s.name for s in DEFAULT_STAGES]).all()
    assert (res.loaded["amount"].dropna() >= 0).all()


@pytest.mark.parametrize("order", ["as_given", "reversed"])
def test_history_rows_deduplicated_and_sorted_by_id_text_then_date(order: str) -> None:
    from transforms.canonical import canonicalize_history

    rows = [  # (opportunity_id, stage, entered_date)
        ("D-2", "Qualification", "2026-01-03"),
        (" D-10 ", "lead generation", "2026-01-01"),  # padded and lower case: D-10, Lead generation
        ("D-2", "Lead generation", "2026-01-01"),
        ("D-2", "Qualification", "2026-01-03"),  # the same row again: dropped
        ("D-2", "contract sent", "2026-01-03"),  # same id and day, another stage (mapped): kept
        ("D-10", "Lead generation", "2026-01-01"),  # same as row 2 once trimmed: dropped
        ("", "Won", "2026-01-02"),  # no id
        ("D-3", "Nowhere", "2026-01-02"),  # unknown stage
        ("D-3", "Won", "not a date"),
        ("D-3", "Won", "2026-01-05"),
    ]
    if order == "reversed":
        rows = rows[::-1]
    frame = pd.DataFrame(rows, columns=["opportunity_id", "stage", "entered_date"])
    out = canonicalize_history(frame, source="crm", tz=BERLIN, stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP)
    same_day = [("D-2", "Qualification"), ("D-2", "Closing")]  # equal keys keep the order they came in
    expected = [("D-10", "Lead generation", "2026-01-01"), ("D-2", "Lead generation", "2026-01-01"),
                *[(i, s, "2026-01-03") for i, s in (same_day if order == "as_given" else same_day[::-1])],
                ("D-3", "Won", "2026-01-05")]
    got = [(i, s, d.strftime("%Y-%m-%d")) for i, s, d in
           zip(out["opportunity_id"], out["stage"], out["entered_date"], strict=True)]
    assert got == expected
    assert list(out.columns) == ["opportunity_id", "stage", "entered_date", SOURCE_COLUMN]
    assert out.index.equals(pd.RangeIndex(len(expected))) and set(out[SOURCE_COLUMN]) == {"crm"}
